import FoundationEssentials
import Glibc

/// Runs `exercise` on every file of the directories (or files) given as arguments: the
/// fuzz targets built normally replay their corpus, so that the test suite checks every
/// seed and every crash input ever found, without libFuzzer.
public func replayCorpus(_ exercise: ([UInt8]) -> Void) {
  var count = 0
  for argument in CommandLine.arguments.dropFirst() {
    var paths = [argument]
    if let names = try? FileManager.default.contentsOfDirectory(atPath: argument) {
      paths = names.sorted().map { argument + "/" + $0 }
    }
    for path in paths {
      guard let data = FileManager.default.contents(atPath: path) else { continue }
      exercise(Array(data))
      count += 1
    }
  }
  print("replayed \(count) inputs")
}
