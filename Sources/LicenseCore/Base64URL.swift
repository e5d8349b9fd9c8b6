import FoundationEssentials

/// Base64url without padding (RFC 7515 §2), the only encoding a JWS uses.
public enum Base64URL {
  public static func encode(_ bytes: some Sequence<UInt8>) -> String {
    let standard = Data(bytes).base64EncodedString().utf8
    return String(
      decoding: standard.compactMap { c in
        c == UInt8(ascii: "=")
          ? nil : c == UInt8(ascii: "+") ? UInt8(ascii: "-") : c == UInt8(ascii: "/") ? UInt8(ascii: "_") : c
      },
      as: UTF8.self)
  }

  /// Decodes strictly: only the base64url alphabet, no padding, no white space, and no
  /// non-zero trailing bits (so that one byte string has exactly one encoding).
  public static func decode(_ text: some StringProtocol) -> [UInt8]? {
    guard text.utf8.allSatisfy(isAlphabet), text.utf8.count % 4 != 1 else { return nil }
    var standard = String(
      decoding: text.utf8.map { c in
        c == UInt8(ascii: "-") ? UInt8(ascii: "+") : c == UInt8(ascii: "_") ? UInt8(ascii: "/") : c
      },
      as: UTF8.self)
    standard += String(repeating: "=", count: (4 - standard.utf8.count % 4) % 4)
    guard let data = Data(base64Encoded: standard) else { return nil }
    let bytes = [UInt8](data)
    guard encode(bytes) == text else { return nil }
    return bytes
  }

  private static func isAlphabet(_ c: UInt8) -> Bool {
    (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 45 || c == 95
  }
}
