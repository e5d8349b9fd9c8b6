import SimpleJSON
import Testing

/// Text from outside, bounded where it enters (issue 20).
@Suite struct ExternalTextTests {
  @Test func aLongTextIsCutToItsLimitWithAnEllipsis() {
    let megabyte = String(repeating: "é", count: 1 << 20)
    let bounded = ExternalText.bounded(megabyte, limit: ExternalText.messageLimit)
    #expect(bounded.unicodeScalars.count == ExternalText.messageLimit)
    #expect(bounded.hasSuffix("…"))
    #expect(ExternalText.bounded("short", limit: 300) == "short")
    #expect(ExternalText.bounded("abc", limit: 3) == "abc")
    #expect(ExternalText.bounded("abcd", limit: 3) == "ab…")
    #expect(ExternalText.bounded("abc", limit: 0) == "")
  }

  @Test func controlCharactersBecomeSpaces() {
    #expect(ExternalText.bounded("line\nbreak\u{1b}[31m\tand\u{7f}", limit: 100) == "line break [31m and ")
  }

  @Test func aCodeIsKeptWhenItLooksLikeOneElseBounded() {
    #expect(ExternalText.code("code_blocked") == "code_blocked")
    #expect(ExternalText.code("http_503") == "http_503")
    #expect(ExternalText.code("not a code\n") == "not a code ")
    let long = String(repeating: "x", count: 1000)
    #expect(ExternalText.code(long).count == ExternalText.codeLimit)
  }
}
