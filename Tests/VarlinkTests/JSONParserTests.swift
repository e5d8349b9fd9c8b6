import Foundation
import SimpleJSON
import Testing
import Varlink

/// The hand-written JSON parser (SimpleJSON's JSONParser, behind `JSONValue.parse`), checked
/// against Foundation's JSONSerialization on what both accept, and on what it must refuse.
@Suite struct JSONParserTests {
  func parse(_ text: String) -> JSONValue? { JSONValue.parse(Array(text.utf8)) }

  @Test func readsEveryKindOfValue() {
    #expect(
      parse(#" {"a": [1, -2.5, 3e2, 0, -0, 1E-2], "b": {"c": null, "d": true, "e": false}, "f": "x"} "#)
        == .object([
          "a": .array([.number(1), .number(-2.5), .number(300), .number(0), .number(-0.0), .number(0.01)]),
          "b": .object(["c": .null, "d": .bool(true), "e": .bool(false)]), "f": .string("x"),
        ]))
    #expect(parse("[]") == .array([]))
    #expect(parse("{}") == .object([:]))
    #expect(parse("\"top\"") == .string("top"))
    #expect(parse("7") == .number(7))
  }

  @Test func readsEscapesSurrogatePairsAndUTF8AsTheyAre() {
    #expect(parse(#""a\"b\\c\/d\b\f\n\r\t""#) == .string("a\"b\\c/d\u{08}\u{0C}\n\r\t"))
    #expect(parse(#""\u00e9\u20AC\uD83D\uDE00""#) == .string("é€😀"))
    #expect(parse("\"é€😀\"") == .string("é€😀"))
    #expect(parse(#""\u0000""#) == .string("\u{0}"))
  }

  @Test(arguments: [
    "", " ", "{", "}", "[1,]", "[,1]", "{\"a\":1,}", "{\"a\" 1}", "{a:1}", "[1 2]", "01", "-", "1.", ".5",
    "1e",
    "+1", "1e400", "-1e400", "NaN", "Infinity", "tru", "nul", "[1]x", "{} {}", "\"unterminated",
    "\"\\x\"", "\"\\u12\"", "\"\\uD83D\"", "\"\\uDE00\"", "\"\\uD83Dx\"", "\"tab\there\"", "\"line\nbreak\"",
    "{\"a\":1,\"a\":2}", "'single'",
  ])
  func refusesWhatIsNotStrictJSON(text: String) {
    #expect(parse(text) == nil, "\(text.debugDescription)")
  }

  /// Swift normalises strings when it hashes or compares them; a run of combining marks
  /// makes that quadratic (issue 25's attack: a 1 MB key cost a minute). Keys are short, and
  /// text must be stream-safe (UAX #15: at most 30 non-starters in a row), escaped or not.
  @Test func keysAreShortAndTextIsStreamSafe() {
    let marks = { (n: Int) in "e" + String(repeating: "\u{301}", count: n) }
    #expect(parse("\"\(marks(30))\"") == .string(marks(30)))
    #expect(parse("\"\(marks(31))\"") == nil)
    #expect(parse("\"" + "e" + String(repeating: "\\u0301", count: 31) + "\"") == nil, "escaped marks too")
    #expect(parse("\"\(String(repeating: marks(30) + " ", count: 1000))\"") != nil, "many short runs")
    #expect(parse("{\"\(String(repeating: "k", count: 256))\": 1}") != nil)
    #expect(parse("{\"\(String(repeating: "k", count: 257))\": 1}") == nil)
    #expect(parse("{\"\(String(repeating: "é", count: 129))\": 1}") == nil, "bytes, not characters")
    // Text in the scripts that use combining marks as letters stays readable.
    #expect(parse("\"नमस्ते ക്ഷ Việt Nam\"") == .string("नमस्ते ക്ഷ Việt Nam"))
  }

  @Test func refusesInvalidUTF8() {
    #expect(JSONValue.parse([0x22, 0xC3, 0x28, 0x22]) == nil)  // a broken two-byte sequence
    #expect(JSONValue.parse([0x22, 0xED, 0xA0, 0x80, 0x22]) == nil)  // an encoded surrogate
    #expect(JSONValue.parse([0x22, 0xFF, 0x22]) == nil)
  }

  @Test func nestingIsBoundedSoThatNoInputExhaustsTheStack() {
    let deep = String(repeating: "[", count: 128) + String(repeating: "]", count: 128)
    #expect(parse(deep) != nil)
    let deeper = String(repeating: "[", count: 129) + String(repeating: "]", count: 129)
    #expect(parse(deeper) == nil)
    // A megabyte of openers is refused at once, not by a crash.
    #expect(JSONValue.parse([UInt8](repeating: UInt8(ascii: "["), count: 1 << 20)) == nil)
  }

  /// What the agent reads (key headers and payloads, Varlink calls, client replies): the
  /// same value as Foundation's own parser gives.
  @Test func agreesWithFoundationOnRealisticDocuments() throws {
    let documents = [
      #"{"alg":"EdDSA","typ":"JWT","kid":"vendor-2027"}"#,
      #"{"iss":"Vendor","jti":"KS-1","iat":1767225600,"nbf":1767225600.25,"exp":1798761600,"product":"svm-protection","edition":"standard","scheme":"vm-count","os_type":"server","license_type":"commercial","units":50,"extra":{"nested":[1,2,{"x":"\u00e9"}]}}"#,
      #"{"method":"io.licenseagent.Agent.AddKey","parameters":{"key":"a.b.c","role":"reserve","replaceScheme":false},"oneway":true}"#,
      #"{"error":"code_blocked","message":"The code \"ABCDE\" is blocked.\nCall the vendor.","retryAfter":12.5}"#,
    ]
    for document in documents {
      let ours = try #require(parse(document))
      let theirs = try JSONSerialization.jsonObject(with: Data(document.utf8), options: [.fragmentsAllowed])
      #expect(Self.same(ours, theirs), "\(document)")
    }
  }

  static func same(_ value: JSONValue, _ foundation: Any) -> Bool {
    switch value {
    case .null: return foundation is NSNull
    case .bool(let flag): return (foundation as? NSNumber)?.boolValue == flag
    case .number(let double): return (foundation as? NSNumber)?.doubleValue == double
    case .string(let text): return foundation as? String == text
    case .array(let items):
      guard let others = foundation as? [Any], others.count == items.count else { return false }
      return zip(items, others).allSatisfy { same($0, $1) }
    case .object(let members):
      guard let others = foundation as? [String: Any], others.count == members.count else { return false }
      return members.allSatisfy { key, member in others[key].map { same(member, $0) } ?? false }
    }
  }

  @Test func aFramerTakesManySmallMessagesWithoutLosingOrReorderingAny() throws {
    var framer = MessageFramer(maximumMessageSize: 64)
    var expected: [[UInt8]] = []
    var taken: [[UInt8]] = []
    // Messages split across appends at every offset, taken as they complete.
    var stream: [UInt8] = []
    for index in 0..<500 {
      let message = Array("{\"n\":\(index)}".utf8)
      expected.append(message)
      stream += message + [0]
    }
    var offset = 0
    var chunk = 1
    while offset < stream.count {
      let end = min(stream.count, offset + chunk)
      framer.append(stream[offset..<end])
      while let message = try framer.next() { taken.append(message) }
      offset = end
      chunk = chunk % 37 + 1
    }
    #expect(taken == expected)
    #expect(!framer.hasPartialMessage && framer.bufferedCount == 0)
  }

  @Test func aFramerRefusesAMessageOverItsLimitEvenWhenItArrivesInPieces() {
    var framer = MessageFramer(maximumMessageSize: 100)
    for _ in 0..<10 { framer.append([UInt8](repeating: UInt8(ascii: "x"), count: 10)) }
    #expect(throws: Never.self) { _ = try framer.next() }  // 100 bytes, no NUL yet: still allowed
    framer.append([UInt8(ascii: "x")])
    #expect(throws: VarlinkProtocolError.self) { _ = try framer.next() }
    var lowered = MessageFramer(maximumMessageSize: 1000)
    lowered.limit(to: 10)
    lowered.append(Array("01234567890\0".utf8))
    #expect(throws: VarlinkProtocolError.self) { _ = try lowered.next() }
  }
}
