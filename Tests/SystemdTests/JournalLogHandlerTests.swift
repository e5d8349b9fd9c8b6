import LicenseCore
import Logging
import Systemd
import Testing

@Suite struct JournalLogHandlerTests {
  @Test(arguments: [
    ("peer_uid", "PEER_UID"), ("peer.uid", "PEER_UID"), ("state-directory", "STATE_DIRECTORY"),
    ("_private", "PRIVATE"),
    ("1st", "F_1ST"), ("Serial", "SERIAL"),
  ])
  func metadataKeysBecomeValidJournalFieldNames(key: String, field: String) {
    #expect(JournalLogHandler.fieldName(key) == field)
    #expect(JournalEvent.isValidFieldName(field))
  }

  @Test func aKeyWithNothingUsableIsDropped() {
    #expect(JournalLogHandler.fieldName("___") == nil)
    #expect(JournalLogHandler.fieldName(String(repeating: "a", count: 80)) == nil)
  }

  @Test func levelsMapToSyslogPriorities() {
    let expected: [(Logger.Level, Int)] = [
      (.trace, 7), (.debug, 7), (.info, 6), (.notice, 5), (.warning, 4), (.error, 3), (.critical, 2),
    ]
    for (level, priority) in expected { #expect(JournalLogHandler.priority(level) == priority) }
  }

  @Test func eventFieldsCarryTheContractsIdentifiers() {
    let event = JournalEvent(
      .keyPromoted, message: "m", fields: [.init(.slot, "server")], transitionID: 4)
    let fields = journalFields(of: event, transition: "abc:4")
    let names = fields.map(\.name)
    #expect(names.contains("MESSAGE_ID") && names.contains("PRIORITY") && names.contains("SYSLOG_IDENTIFIER"))
    #expect(fields.first { $0.name == "MESSAGE_ID" }?.value == EventKind.keyPromoted.messageID)
    #expect(fields.first { $0.name == "SYSLOG_IDENTIFIER" }?.value == "license-agent")
    #expect(fields.first { $0.name == "LICENSE_TRANSITION" }?.value == "abc:4")
    #expect(fields.allSatisfy { JournalEvent.isValidFieldName($0.name) })
  }
}
