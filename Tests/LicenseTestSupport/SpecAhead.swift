import Foundation

/// What a test that compares the code with the spec (`../shared/spec/`) may leave out: the
/// entries the spec describes ahead of their code, listed explicitly by the open issue that
/// implements them. The comparison stays strict both ways: an entry of the spec that is
/// neither implemented nor listed ahead is a mismatch, and so is a listed entry that is
/// implemented already (the issue forgot to empty its part of the list) or that the spec
/// does not have.
public struct SpecAhead: Sendable {
  /// The entries ahead, by issue number.
  public let byIssue: [Int: Set<String>]

  public init(_ byIssue: [Int: Set<String>]) { self.byIssue = byIssue }

  /// Every entry listed ahead, whatever its issue.
  public var all: Set<String> { byIssue.values.reduce(into: []) { $0.formUnion($1) } }

  /// The spec's folder beside the checkout (where CI lays it too).
  public static let specFolder =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path + "/shared/spec"

  /// One sentence per mismatch between `documented` (what the spec has) and `implemented`
  /// (what the code has), given what is ahead; empty when they agree. `kind` names the
  /// entries in the sentences ("rule", "metric").
  public func mismatches(kind: String, documented: Set<String>, implemented: Set<String>) -> [String] {
    var found: [String] = []
    let missing = documented.subtracting(implemented).subtracting(all)
    if !missing.isEmpty {
      found.append("in the spec, neither implemented nor listed ahead (\(kind)s): \(missing.sorted())")
    }
    let extra = implemented.subtracting(documented)
    if !extra.isEmpty { found.append("implemented but not in the spec (\(kind)s): \(extra.sorted())") }
    var seen: [String: Int] = [:]
    for (issue, entries) in byIssue.sorted(by: { $0.key < $1.key }) {
      let done = entries.intersection(implemented)
      if !done.isEmpty {
        found.append("issue \(issue): implemented, so no longer ahead: remove \(done.sorted()) from its list")
      }
      let unknown = entries.subtracting(documented)
      if !unknown.isEmpty {
        found.append("issue \(issue): listed ahead but not in the spec: \(unknown.sorted())")
      }
      for entry in entries.sorted() {
        if let other = seen[entry] { found.append("\(entry) is listed under issues \(other) and \(issue)") }
        seen[entry] = issue
      }
    }
    return found
  }
}
