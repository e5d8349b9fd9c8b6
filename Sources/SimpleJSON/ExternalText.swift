/// Text that comes from outside the agent, mostly in JSON documents (an activation server's
/// `error` and `message`, a client program's output), bounded where it enters.
///
/// Whatever enters is stored in the state, written at every save, shown by every status
/// reply and logged: unbounded, one 1 MB message from a client made every GetStatus 3 MB
/// for every caller and pushed the reply past the control server's bounds (issue 20). So
/// each text is cut to a length that is plenty for a person (an ellipsis says it was cut),
/// and control characters, which would break a status line or a journal field, become
/// spaces, as do format characters (bidirectional overrides, zero-width spaces) and line
/// and paragraph separators, which would make a line read otherwise than it is.
public enum ExternalText {
  /// An error code (`code_blocked`): at most this many characters.
  public static let codeLimit = 64
  /// A sentence for a person (a server's `message`): at most this many characters.
  public static let messageLimit = 300
  /// What a client program wrote on its standard error, per attempt, for the journal.
  public static let diagnosticsLimit = 2000

  /// `text` with control and format characters and line and paragraph separators as spaces, cut to `limit` characters (the last of
  /// which is then `…`).
  public static func bounded(_ text: some StringProtocol, limit: Int) -> String {
    guard limit > 0 else { return "" }
    var out = String.UnicodeScalarView()
    var count = 0
    for scalar in text.unicodeScalars {
      if count == limit {
        out.removeLast()
        out.append("…")
        break
      }
      switch scalar.properties.generalCategory {
      case .control, .format, .lineSeparator, .paragraphSeparator: out.append(" ")
      default: out.append(scalar)
      }
      count += 1
    }
    return String(out)
  }

  /// An error code as a server or client gives it: kept when it looks like one (letters,
  /// digits, `_`, `-`, `.`, at most ``codeLimit``), else bounded as text.
  public static func code(_ text: String) -> String {
    let isCode =
      !text.isEmpty && text.count <= codeLimit
      && text.unicodeScalars.allSatisfy {
        $0.isASCII && ($0.properties.isAlphabetic || "0123456789_-.".unicodeScalars.contains($0))
      }
    return isCode ? text : bounded(text, limit: codeLimit)
  }
}
