import AgentRuntime
import AgentSettings
import Foundation
import LicenseCore
import LicenseTestSupport
import Testing

/// The package's contents and documentation, without booting anything: lintian, the man
/// pages against `--help`, and the shipped configuration.
@Suite struct DebianPackageTests {
  static let repository = BootedContainer.repository

  @Test func lintianReportsNoErrorAndOnlyTheTagsPackagingREADMEJustifies() throws {
    let package = try SystemdEndToEndTests.builtPackage()
    try #require(
      FileManager.default.isExecutableFile(atPath: "/usr/bin/lintian"),
      "lintian is missing: apt-get install lintian (scripts/ensure-deps does)")
    // Every tag down to information and pedantic ones (hardening-no-bindnow is one).
    let result = try runProcess(
      "/usr/bin/lintian", ["--info", "--pedantic", "--tag-display-limit", "0", package])
    let tags = result.stdout.split(separator: "\n").filter {
      ["E:", "W:", "I:", "P:"].contains(String($0.prefix(2)))
    }
    #expect(!tags.contains { $0.hasPrefix("E:") }, "\(tags)")
    let readme = try String(contentsOfFile: Self.repository + "/packaging/README.md", encoding: .utf8)
    let justified = readme.components(separatedBy: "## Lintian").last ?? ""
    for line in tags {
      // "W: license-agent: TAG [context]"
      let tag = line.split(separator: " ").dropFirst(2).first.map(String.init) ?? String(line)
      #expect(justified.contains("`\(tag)`"), "lintian tag not justified in packaging/README.md: \(line)")
    }
  }

  /// The package carries the programs of its own version: a build of the package never
  /// packs the programs of an earlier one (debhelper skips a build it has a record of).
  @Test func theProgramsInThePackageAreOfItsVersion() throws {
    let package = try SystemdEndToEndTests.builtPackage()
    let folder = makeTemporaryDirectory("deb-contents")
    defer { removeTemporaryDirectory(folder) }
    let extracted = try runProcess("/usr/bin/dpkg-deb", ["-x", package, folder])
    try #require(extracted.status == 0, "\(extracted.stderr)")
    let version = try runProcess("/usr/bin/dpkg-deb", ["-f", package, "Version"]).stdout
      .trimmingCharacters(in: .whitespacesAndNewlines)
    let upstream = String(version.split(separator: "-").first ?? "")
    #expect(
      upstream == ProductVersion.current, "the package \(version), the sources \(ProductVersion.current)")
    for program in ["usr/sbin/license-agent", "usr/bin/agentctl", "usr/bin/license-keytool"] {
      let said = try runProcess(folder + "/" + program, ["--version"])
      #expect(said.stdout.contains(upstream), "\(program) --version: \(said.stdout)")
    }
  }

  /// What a site's builders get: the source package (`build-deb --source`) unpacks with
  /// `dpkg-source -x` to the committed tree, debian/ included, and its Build-Depends are met
  /// here; lintian finds no error or warning in it.
  @Test func theSourcePackageUnpacksToTheCommittedTree() throws {
    let out = makeTemporaryDirectory("source-package")
    defer { removeTemporaryDirectory(out) }
    let built = try runProcess(Self.repository + "/packaging/build-deb", ["--source", "--out", out])
    try #require(built.status == 0, "build-deb --source: \(built.stderr)")
    let dsc = built.stdout.trimmingCharacters(in: .whitespacesAndNewlines)
    #expect(dsc == out + "/license-agent_\(ProductVersion.current)-1.dsc")
    let tree = out + "/tree"
    let unpacked = try runProcess("/usr/bin/dpkg-source", ["--no-check", "-x", dsc, tree])
    try #require(unpacked.status == 0, "dpkg-source -x: \(unpacked.stderr)")
    let committed = try runProcess(
      "/usr/bin/git", ["-C", Self.repository, "ls-tree", "-r", "--name-only", "HEAD"])
    try #require(committed.status == 0, "\(committed.stderr)")
    let listed = try runProcess(
      "/usr/bin/find",
      [
        tree, "-path", tree + "/.pc", "-prune", "-o", "(", "-type", "f", "-o", "-type", "l", ")", "-printf",
        "%P\\n",
      ])
    let expected = Set(committed.stdout.split(separator: "\n").map(String.init))
    let found = Set(listed.stdout.split(separator: "\n").map(String.init))
    #expect(
      found == expected,
      "only in the source package: \(found.subtracting(expected).sorted()); missing: \(expected.subtracting(found).sorted())"
    )
    let control = try String(contentsOfFile: tree + "/debian/control", encoding: .utf8)
    #expect(control.contains("debhelper-compat (= 13)"))
    let builddeps = try runProcess("/bin/sh", ["-c", "cd \"$1\" && dpkg-checkbuilddeps", "sh", tree])
    #expect(builddeps.status == 0, "dpkg-checkbuilddeps: \(builddeps.stderr)")
    let lintian = try runProcess("/usr/bin/lintian", ["--pedantic", "--tag-display-limit", "0", dsc])
    let problems = lintian.stdout.split(separator: "\n").filter { $0.hasPrefix("E:") || $0.hasPrefix("W:") }
    #expect(problems.isEmpty, "lintian on the source package: \(problems)")
  }

  @Test func theDefaultConfigurationIsTheBuiltInOneAndNamesEveryKey() throws {
    // The agent accepts the shipped file and it changes nothing: every key is commented
    // out at its default.
    let path = Self.repository + "/packaging/agent.toml"
    let text = try String(contentsOfFile: path, encoding: .utf8)
    #expect(try AgentConfiguration.parse(text, file: path) == AgentConfiguration())
    for key in [
      "product", "[activation]", "client", "url", "proxy", "command", "ca-file", "attempt-timeout",
      "retry-initial",
      "retry-max", "alert-after", "[warnings]", "before", "[control]", "admin-group",
    ] {
      #expect(text.contains(key), "packaging/agent.toml does not mention \(key)")
    }
    // Uncommented, the defaults it shows are the agent's defaults (examples such as url
    // stay commented).
    let defaultKeys = [
      "product", "client", "attempt-timeout", "retry-initial", "retry-max", "alert-after", "before",
      "admin-group",
    ]
    let uncommented = text.split(separator: "\n", omittingEmptySubsequences: false).map { line in
      defaultKeys.contains { line.hasPrefix("#\($0) = ") } ? String(line.dropFirst()) : String(line)
    }.joined(separator: "\n")
    #expect(uncommented != text)
    #expect(try AgentConfiguration.parse(uncommented, file: path) == AgentConfiguration())
  }
}

/// The man pages stay in step with the programs: every subcommand and long option that
/// `--help` knows (from argument-parser's `--experimental-dump-help`) is in the page, and
/// groff reads the pages without a warning.
@Suite struct ManPageTests {
  static let pages = BootedContainer.repository + "/packaging/man/"

  @Test(arguments: [("agentctl", "agentctl.1"), ("license-keytool", "license-keytool.1")])
  func everySubcommandAndOptionIsInTheManPage(program: String, page: String) throws {
    let dump = try runProcess(productsDirectory() + "/" + program, ["--experimental-dump-help"])
    let root = try #require(
      try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [String: Any])
    // The page escapes dashes for groff: "\-\-code\-file".
    let text = try String(contentsOfFile: Self.pages + page, encoding: .utf8)
      .replacingOccurrences(of: "\\-", with: "-")
    var commands = [try #require(root["command"] as? [String: Any])]
    var checked = 0
    while let command = commands.popLast() {
      let name = command["commandName"] as? String ?? ""
      if name != program && name != "help" {
        #expect(
          text.contains(".B \(name)") || text.contains(".BI \"\(name)"), "\(page) lacks the command \(name)")
      }
      for argument in command["arguments"] as? [[String: Any]] ?? [] {
        for long in (argument["names"] as? [[String: Any]] ?? []) where long["kind"] as? String == "long" {
          let option = "--" + (long["name"] as? String ?? "")
          #expect(text.contains(option), "\(page) lacks \(option) (\(name))")
          checked += 1
        }
      }
      commands += command["subcommands"] as? [[String: Any]] ?? []
    }
    #expect(checked > 10)
  }

  @Test func theDaemonsPageNamesItsOptionsFilesSignalsAndEveryEvent() throws {
    let text = try String(contentsOfFile: Self.pages + "license-agent.8", encoding: .utf8)
      .replacingOccurrences(of: "\\-", with: "-")
    for item in [
      "--version", "--help", "/etc/license-agent/agent.toml", "trusted-issuers", "/var/lib/license-agent",
      "/run/license-agent/io.licenseagent.Agent", "SIGHUP", "SIGTERM", "LICENSE_AGENT_LOG", "78",
    ] {
      #expect(text.contains(item), "license-agent.8 lacks \(item)")
    }
    for kind in EventKind.allCases {
      #expect(text.contains(kind.rawValue) && text.contains(kind.messageID), "license-agent.8 lacks \(kind)")
    }
  }

  /// agent.toml(5) documents every setting the agent reads, under its section.
  @Test func theConfigurationPageNamesEverySetting() throws {
    let text = try String(contentsOfFile: Self.pages + "agent.toml.5", encoding: .utf8)
      .replacingOccurrences(of: "\\-", with: "-")
    for name in AgentConfiguration.settingNames {
      let parts = name.split(separator: ".")
      let key = String(parts.last!)
      #expect(
        text.contains(".B \(key)") || text.contains(".BR \(key) ") || text.contains(", \" \(key)"), "\(name)")
      if parts.count == 2 { #expect(text.contains(".SS [\(parts[0])]"), "[\(parts[0])]") }
    }
  }

  @Test(arguments: ["license-agent.8", "agentctl.1", "license-keytool.1", "agent.toml.5"])
  func groffReadsThePageWithoutWarnings(page: String) throws {
    let result = try runProcess(
      "/usr/bin/man", ["--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z", Self.pages + page],
      environment: ["LC_ALL": "C.UTF-8", "PATH": "/usr/bin:/bin"])
    #expect(result.status == 0)
    #expect(result.stderr.isEmpty, "\(result.stderr)")
  }
}

/// The shipped programs link Foundation's essentials only (README, "Building"): whole
/// Foundation, linked statically, brings ICU's data and quadruples every binary.
@Suite struct PackagedCodeTests {
  static let packagedTargets = [
    "SimpleJSON", "StandardIO", "LicenseCore", "LicenseStorage", "SystemClock", "Systemd", "Varlink",
    "ControlInterface", "AgentSettings", "AgentRuntime", "license-agent", "agentctl", "license-keytool",
    "license-agent-activate-https",
  ]

  @Test func noPackagedTargetImportsWholeFoundation() throws {
    var checked = 0
    for target in Self.packagedTargets {
      let dir = BootedContainer.repository + "/Sources/" + target
      for file in try FileManager.default.contentsOfDirectory(atPath: dir) where file.hasSuffix(".swift") {
        let text = try String(contentsOfFile: dir + "/" + file, encoding: .utf8)
        let imports = text.split(separator: "\n").filter {
          $0.hasPrefix("import ") || $0.contains(" import ")
        }
        #expect(
          !imports.contains {
            $0.split(separator: " ").last == "Foundation" || $0.contains("FoundationNetworking")
          },
          "Sources/\(target)/\(file) imports Foundation: use FoundationEssentials (and StandardIO)")
        checked += 1
      }
    }
    #expect(checked >= 20)
  }
}
