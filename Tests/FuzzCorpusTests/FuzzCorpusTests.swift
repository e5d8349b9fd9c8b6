import Foundation
import LicenseTestSupport
import Testing

/// Every input of the fuzz corpora (Fuzz/Corpus: the seeds and every crash ever found)
/// replayed through the fuzz targets' own functions, built without libFuzzer (Fuzz/README.md).
@Suite struct FuzzCorpusTests {
  static let corpus =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().path + "/Fuzz/Corpus/"

  @Test(arguments: [
    ("fuzz-key-parser", "key-parser"), ("fuzz-varlink", "varlink"), ("fuzz-configuration", "configuration"),
  ])
  func theCorpusReplaysWithoutACrash(target: String, directory: String) throws {
    let files = try FileManager.default.contentsOfDirectory(atPath: Self.corpus + directory)
    #expect(files.count >= 10, "a seed corpus of at least 10 inputs")
    let result = try runProcess(productsDirectory() + "/" + target, [Self.corpus + directory])
    #expect(result.status == 0, "\(result.stderr)")
    #expect(result.stdout.contains("replayed \(files.count) inputs"), "\(result.stdout)")
  }
}
