import FoundationEssentials
import Glibc

#if FUZZING
  import CFuzzer

  /// The input function libFuzzer calls; a C function pointer cannot capture, so the
  /// target's function waits here.
  nonisolated(unsafe) private var currentExercise: (([UInt8]) -> Void)?

  /// Hands the process to libFuzzer (built with -sanitize=fuzzer -DFUZZING), which calls
  /// `exercise` with each input it makes.
  public func runFuzzer(_ exercise: @escaping ([UInt8]) -> Void) -> Never {
    currentExercise = exercise
    var argc = CommandLine.argc
    var argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>? = CommandLine.unsafeArgv
    let status = LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzTestOneInput(data, size) }
    exit(status)
  }

  /// libFuzzer's input function by its usual name (its driver refers to it).
  @_cdecl("LLVMFuzzerTestOneInput")
  public func fuzzTestOneInput(_ data: UnsafePointer<UInt8>?, _ size: Int) -> Int32 {
    currentExercise?(Array(UnsafeBufferPointer(start: data, count: size)))
    return 0
  }
#endif

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

/// The fuzz target's whole program: libFuzzer when built for fuzzing, else a corpus replay.
public func fuzzMain(_ exercise: @escaping ([UInt8]) -> Void) {
  #if FUZZING
    runFuzzer(exercise)
  #else
    replayCorpus(exercise)
  #endif
}
