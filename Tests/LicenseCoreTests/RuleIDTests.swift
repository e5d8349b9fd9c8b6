import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

@Suite struct RuleIDTests {
  /// The rules document of the steering repository (`../shared/spec/rules.md`).
  static let rulesDocument = SpecAhead.specFolder + "/rules.md"

  /// Rules the document describes ahead of their code, by the open issue that implements
  /// them. That issue adds the rules' `RuleID` cases and empties its entry here.
  static let ahead = SpecAhead([:])

  /// The rule ids of the document: rules are introduced as "- **R5** The reserve key ..."
  /// (the words above them as "- **Slot**: ...").
  static func documentedRules() throws -> Set<String> {
    let text = try String(contentsOfFile: rulesDocument, encoding: .utf8)
    return Set(
      text.split(separator: "\n").compactMap { line -> String? in
        guard line.hasPrefix("- **"), let end = line.dropFirst(4).firstIndex(of: "*") else { return nil }
        let id = line[line.index(line.startIndex, offsetBy: 4)..<end]
        guard let letter = id.first, letter.isUppercase, id.count >= 2, id.dropFirst().allSatisfy(\.isNumber)
        else { return nil }
        return String(id)
      })
  }

  @Test func theTypeNamesEveryRuleOfTheRulesDocumentButThoseAheadAndNoOther() throws {
    let ids = try Self.documentedRules()
    #expect(ids.count >= 39, "rules found in \(Self.rulesDocument): \(ids.sorted())")
    let mismatches = Self.ahead.mismatches(
      kind: "rule", documented: ids, implemented: Set(RuleID.allCases.map(\.rawValue)))
    #expect(mismatches.isEmpty, "\(mismatches.joined(separator: "\n"))")
  }

  /// The comparison itself is strict: each way the code and the spec can disagree is found.
  @Test func theComparisonFindsEachWayTheCodeAndTheSpecDisagree() {
    let ahead = SpecAhead([23: ["U1", "U2"], 25: ["B1"]])
    let spec: Set<String> = ["A1", "A2", "U1", "U2", "B1"]
    #expect(ahead.mismatches(kind: "rule", documented: spec, implemented: ["A1", "A2"]).isEmpty)
    // A rule of the spec that nobody implements or lists.
    let unlisted = ahead.mismatches(kind: "rule", documented: spec.union(["N1"]), implemented: ["A1", "A2"])
    #expect(unlisted == [#"in the spec, neither implemented nor listed ahead (rules): ["N1"]"#])
    // An issue that implemented its rule and left it in the list.
    let stale = ahead.mismatches(kind: "rule", documented: spec, implemented: ["A1", "A2", "U1"])
    #expect(stale == [#"issue 23: implemented, so no longer ahead: remove ["U1"] from its list"#])
    // A listed rule that the spec does not have, and a rule implemented that it does not.
    let gone = ahead.mismatches(
      kind: "rule", documented: ["A1", "A2", "U1", "U2"], implemented: ["A1", "A2", "X9"])
    #expect(
      gone == [
        #"implemented but not in the spec (rules): ["X9"]"#,
        #"issue 25: listed ahead but not in the spec: ["B1"]"#,
      ])
    // One rule under two issues.
    let twice = SpecAhead([23: ["U1"], 24: ["U1"]]).mismatches(
      kind: "rule", documented: ["U1"], implemented: [])
    #expect(twice == ["U1 is listed under issues 23 and 24"])
  }

  @Test func aViolationNamesItsRuleOnTheWireAsTheDocumentDoes() {
    let violation = RuleViolation(rule: .R5, code: "expires_before_active", message: "m")
    #expect(violation.ruleAndCode == "R5 expires_before_active")
    #expect(violation.description == "R5 expires_before_active: m")
  }
}
