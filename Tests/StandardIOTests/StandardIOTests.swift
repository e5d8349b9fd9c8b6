import Glibc
import StandardIO
import Testing

@Suite struct StandardIOTests {
  @Test(arguments: [
    ("  a b \n", "a b"), ("\t\r\nx\n", "x"), ("", ""), ("   ", ""), ("abc", "abc"),
    ("\u{00A0}é\u{2003}", "é"),
  ])
  func trimmingWhitespaceRemovesBothEndsOnly(text: String, trimmed: String) {
    #expect(text.trimmingWhitespace() == trimmed)
  }

  @Test func trimmingASetKeepsTheMiddle() {
    #expect("[::1]".trimming(["[", "]"]) == "::1")
    #expect("\"'key'\"".trimming(["\"", "'"]) == "key")
    #expect("[[]]".trimming(["[", "]"]) == "")
  }

  @Test func writeThenReadAllThroughAPipeKeepsEveryByte() {
    var fds: [Int32] = [0, 0]
    #expect(pipe(&fds) == 0)
    let bytes = (0..<50_000).map { UInt8($0 % 251) }
    // Fits in a pipe's buffer (64 KiB): written whole before it is read.
    #expect(StandardStream.write(bytes, to: fds[1]))
    close(fds[1])
    let back = StandardStream.readAll(fds[0])
    close(fds[0])
    #expect(back == bytes)
  }
}
