import Foundation
import LicenseCore
import Testing

@Suite struct RuleIDTests {
  /// The rules document of the steering repository (`../shared/spec/rules.md`, beside the
  /// checkout, where CI lays it too).
  static let rulesDocument =
    URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
    .deletingLastPathComponent().deletingLastPathComponent().path + "/shared/spec/rules.md"

  @Test func theTypeNamesEveryRuleOfTheRulesDocumentAndNoOther() throws {
    let text = try String(contentsOfFile: Self.rulesDocument, encoding: .utf8)
    // Rules are introduced as "- **R5** The reserve key ..." (the words above them as
    // "- **Slot**: ...").
    let ids = Set(
      text.split(separator: "\n").compactMap { line -> String? in
        guard line.hasPrefix("- **"), let end = line.dropFirst(4).firstIndex(of: "*") else { return nil }
        let id = line[line.index(line.startIndex, offsetBy: 4)..<end]
        guard let letter = id.first, letter.isUppercase, id.count >= 2, id.dropFirst().allSatisfy(\.isNumber)
        else { return nil }
        return String(id)
      })
    #expect(ids.count >= 29, "rules found in \(Self.rulesDocument): \(ids.sorted())")
    #expect(Set(RuleID.allCases.map(\.rawValue)) == ids)
  }

  @Test func aViolationNamesItsRuleOnTheWireAsTheDocumentDoes() {
    let violation = RuleViolation(rule: .R5, code: "expires_before_active", message: "m")
    #expect(violation.ruleAndCode == "R5 expires_before_active")
    #expect(violation.description == "R5 expires_before_active: m")
  }
}
