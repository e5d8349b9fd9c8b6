import ArgumentParser
import FoundationEssentials
import Glibc
import LicenseCore
import LicenseStorage
import SimpleJSON
import StandardIO
import SystemClock

/// `license-keytool`: makes issuer keys and licence keys for labs, tests and demos, and
/// inspects any key. The agent never needs it; operators use it to check a key by hand.
@main
struct Keytool: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "license-keytool",
    abstract: "Make and inspect license-agent licence keys (JWS, EdDSA/Ed25519).",
    discussion: """
      keygen makes an issuer key pair, issue signs a licence key with it, and inspect \
      shows a key's claims and whether it is valid. Keys follow contract §1: any JOSE \
      library can make or check them.

      Exit status: 0 success (inspect: the key is valid), 1 the key is invalid (inspect), \
      64 usage error, 74 a file could not be read or written.
      """,
    version: ProductVersion.current,
    subcommands: [Keygen.self, Issue.self, MakeBlocklist.self, Inspect.self]
  )
}

/// The moment the command runs, to the microsecond.
func currentTime() -> Timestamp { SystemWallClock().now() }

/// Prints to standard error and exits with `code`.
func fail(_ message: String, code: Int32) -> Never {
  StandardStream.error("license-keytool: \(message)\n")
  exit(code)
}

/// Writes a file with `mode`, refusing to overwrite unless `force`.
func writeFile(_ path: String, _ text: String, mode: mode_t, force: Bool) {
  if !force && FileManager.default.fileExists(atPath: path) {
    fail("\(path) already exists; choose another --out directory or pass --force to overwrite it", code: 74)
  }
  let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode)
  guard fd >= 0 else { fail("cannot write \(path): \(String(cString: strerror(errno)))", code: 74) }
  fchmod(fd, mode)
  defer { close(fd) }
  guard StandardStream.write(Array(text.utf8), to: fd), fsync(fd) == 0 else {
    fail("cannot write \(path): \(String(cString: strerror(errno)))", code: 74)
  }
}

/// Reads a key or JWK file; `-` is standard input.
func readInput(_ path: String) -> Data {
  if path == "-" { return Data(StandardStream.readAll()) }
  guard let data = FileManager.default.contents(atPath: path) else {
    fail("cannot read \(path): no such file, or not readable", code: 74)
  }
  return data
}

/// What issue and blocklist sign with: the issuer's private JWK, the product, the issuer
/// name and the JWS alg.
struct SigningOptions: ParsableArguments {
  @Option(help: "The issuer's private JWK (from keygen).")
  var signer: String
  @Option(help: "The product the key or list is for.")
  var product: String = EngineConfiguration.defaultProduct
  @Option(help: "The issuer name (iss), as in its keys; default: the signer's kid.")
  var issuer: String?
  @Option(help: "The JWS alg: EdDSA (RFC 8037) or Ed25519 (RFC 9864).")
  var alg: String = "EdDSA"

  /// The issuer's private JWK of `--signer`.
  func jwk() -> JWK {
    do {
      return try JWK(json: readInput(signer))
    } catch {
      fail("\(signer) is not a usable issuer key: \(error)", code: 74)
    }
  }
}

/// The trust directory of `--trust` (inspect): a directory, or exit 74.
func readTrust(_ path: String) -> (trust: TrustStore, problems: [TrustDirectory.Problem]) {
  var info = stat()
  guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
    fail("--trust \(path) is not a directory", code: 74)
  }
  return TrustDirectory.load(path)
}

struct Keygen: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Make an issuer key pair: NAME.private.jwk (mode 0600) and NAME.jwk (public).",
    discussion: "Copy NAME.jwk into the agent's trusted-issuers/ directory; keep NAME.private.jwk secret.")

  @Option(help: "The issuer key id (kid), also the file name: letters, digits, '.', '_', '-'.")
  var kid: String

  @Option(help: "The directory to write the two files in (created if missing).")
  var out: String

  @Flag(help: "Overwrite existing files.")
  var force = false

  func validate() throws {
    guard !kid.isEmpty, kid.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber || "._-".contains($0)) }),
      !kid.hasPrefix(".")
    else {
      throw ValidationError("--kid '\(kid)' must be letters, digits, '.', '_' or '-' (it names the files)")
    }
  }

  func run() throws {
    do {
      try FileManager.default.createDirectory(atPath: out, withIntermediateDirectories: true)
    } catch {
      fail("cannot create \(out): \(error)", code: 74)
    }
    let jwk = JWK.generate(kid: kid)
    let privatePath = out + "/" + kid + ".private.jwk"
    let publicPath = out + "/" + kid + ".jwk"
    writeFile(privatePath, jwk.privateJSON, mode: 0o600, force: force)
    writeFile(publicPath, jwk.publicJSON, mode: 0o644, force: force)
    print("wrote \(privatePath) (private, keep secret)")
    print("wrote \(publicPath) (public, for trusted-issuers/)")
  }
}

struct Issue: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Sign a licence key and print it (one line).",
    discussion: """
      Times are RFC 3339 (2026-12-31T09:00:00Z, fractions allowed) or relative to now \
      (+90d, +5s, +250ms; a past time as --expires=-1d), or 'now'. The key is checked as the agent would read it \
      before it is printed.
      """)

  @OptionGroup var signing: SigningOptions
  @Option(help: "The key's serial number (jti), unique per issuer.")
  var serial: String
  @Option(help: "standard or enterprise.")
  var edition: String
  @Option(help: "vm-count, processors or cores.")
  var scheme: String
  @Option(
    name: .customLong("os-type"), help: "server or workstation; required for vm-count, refused otherwise.")
  var osType: String?
  @Option(name: .customLong("license-type"), help: "commercial, trial or subscription.")
  var licenseType: String
  @Option(help: "Licensed VMs, processors or cores (at least 1).")
  var units: Int
  @Option(name: .customLong("not-before"), help: "Valid from.")
  var notBefore: String = "now"
  @Option(help: "Expiry instant (exp).")
  var expires: String

  func run() throws {
    let now = currentTime()
    func choice<E: RawRepresentable<String> & CaseIterable>(_ text: String, _ option: String, _: E.Type)
      throws -> E
    {
      guard let value = E(rawValue: text) else {
        throw ValidationError(
          "--\(option) '\(text)' is not one of: \(E.allCases.map(\.rawValue).joined(separator: ", "))")
      }
      return value
    }
    func instant(_ text: String, _ option: String) throws -> Timestamp {
      guard let value = Timestamp(instant: text, now: now) else {
        throw ValidationError(
          "--\(option) '\(text)' is not a time: use RFC 3339 (2026-12-31T09:00:00Z) or a relative time (+90d, +5s)"
        )
      }
      return value
    }
    let claims = LicenseClaims(
      issuer: signing.issuer ?? "", serial: serial,
      issuedAt: Timestamp(seconds: now.microseconds / 1_000_000),
      notBefore: try instant(notBefore, "not-before"), expiresAt: try instant(expires, "expires"),
      product: signing.product,
      edition: try choice(edition, "edition", Edition.self),
      scheme: try choice(scheme, "scheme", Scheme.self),
      osType: try osType.map { try choice($0, "os-type", OSType.self) },
      licenseType: try choice(licenseType, "license-type", LicenseType.self), units: units)
    let jwk = signing.jwk()
    var signed = claims
    if signing.issuer == nil { signed.issuer = jwk.kid }
    do {
      let key = try KeyParser.sign(signed, with: jwk, alg: signing.alg)
      // Read back as the agent would: refuse to print a key the agent would refuse.
      _ = try KeyParser.verify(key, trust: TrustStore([jwk]))
      print(key)
    } catch {
      throw ValidationError("cannot issue this key: \(error.description) (\(error.reason))")
    }
  }
}

struct MakeBlocklist: ParsableCommand {
  static let configuration = CommandConfiguration(
    commandName: "blocklist",
    abstract: "Sign a blocklist (rule B1) and print it (one line).",
    discussion: """
      A blocklist names every key of its issuer blocked so far, and replaces the issuer's \
      previous list: give it a sequence number higher than the last one's (an agent refuses \
      an older list, blocklist_rollback). Each --block SERIAL[:REASON] names a key of this \
      issuer. Times as for issue (RFC 3339, +90d, =-1d, now). The list is checked as the \
      agent would read it before it is printed.
      """)

  @OptionGroup var signing: SigningOptions
  @Option(help: "The list's sequence number (0 or more), higher than the issuer's previous list's.")
  var seq: Int
  @Option(
    name: .customLong("block"), parsing: .singleValue,
    help: ArgumentHelp(
      "A key to block: its serial (jti), and why after a colon.", valueName: "SERIAL[:REASON]"))
  var blocked: [String] = []
  @Option(help: "When the keys were blocked (each entry's since).")
  var since: String = "now"

  func validate() throws {
    guard seq >= 0 else { throw ValidationError("--seq must be 0 or more, not \(seq)") }
    for entry in blocked where entry.hasPrefix(":") || entry.isEmpty {
      throw ValidationError("--block '\(entry)' names no serial: use --block SERIAL or --block SERIAL:REASON")
    }
  }

  func run() throws {
    let now = currentTime()
    guard let when = Timestamp(instant: since, now: now) else {
      throw ValidationError(
        "--since '\(since)' is not a time: use RFC 3339 (2026-12-31T09:00:00Z) or a relative time (=-1d, now)"
      )
    }
    let jwk = signing.jwk()
    let entries = blocked.map { text -> BlockedEntry in
      let parts = text.split(separator: ":", maxSplits: 1, omittingEmptySubsequences: false)
      return BlockedEntry(
        serial: String(parts[0]), since: when, reason: parts.count > 1 ? String(parts[1]) : "")
    }
    let list = Blocklist(
      compact: "", kid: jwk.kid, issuer: signing.issuer ?? jwk.kid, sequence: seq,
      issuedAt: Timestamp(seconds: now.microseconds / 1_000_000), product: signing.product, entries: entries)
    do throws(KeyDefect) {
      let signed = try BlocklistParser.sign(list, with: jwk, alg: signing.alg)
      _ = try BlocklistParser.verify(signed, trust: TrustStore([jwk]))
      print(signed)
    } catch {
      throw ValidationError("cannot sign this blocklist: \(error.description) (\(error.reason))")
    }
  }
}

struct Inspect: ParsableCommand {
  static let configuration = CommandConfiguration(
    abstract: "Show a key's claims and verdict; exit 0 when valid, 1 otherwise.",
    discussion: """
      Without --trust the signature is not checked (the verdict says so). With --trust \
      the key must be signed by an issuer of that directory. A blocklist (rule B1) is \
      recognised by its header and shown with its entries. The key must also be valid \
      now (nbf <= now < exp), and for --product if given. On refusal the code (and, for \
      invalid_key, the reason) is printed: see the README's table of reasons.
      """)

  @Argument(help: "The key file ('-' for standard input).")
  var file: String
  @Option(help: "A trust directory of issuer public JWKs (*.jwk).")
  var trust: String?
  @Option(help: "Also require the key to be for this product.")
  var product: String?
  @Flag(help: "Print one JSON object instead of text.")
  var json = false

  func run() throws {
    let text = String(decoding: readInput(file), as: UTF8.self)
    if BlocklistParser.looksLikeBlocklist(text) { return try inspectBlocklist(text) }
    let now = currentTime()
    var key: LicenseKey?
    var code: String?
    var reason: String?
    var message = ""
    var trustProblems: [TrustDirectory.Problem] = []
    do {
      if let trust {
        let loaded = readTrust(trust)
        trustProblems = loaded.problems
        key = try KeyParser.verify(text, trust: loaded.trust)
      } else {
        key = try KeyParser.parseUnverified(text)
      }
    } catch {
      code = error.code
      reason = error.reason
      message = error.description
    }
    if let claims = key?.claims, code == nil {
      if let product, claims.product != product {
        code = "wrong_product"
        message = "the key is for \"\(claims.product)\", not \"\(product)\""
      } else if now < claims.notBefore {
        code = "not_yet_valid"
        message = "the key is not valid before \(claims.notBefore)"
      } else if claims.expiresAt <= now {
        code = "expired"
        message = "the key expired at \(claims.expiresAt)"
      }
    }
    for problem in trustProblems {
      StandardStream.error("license-keytool: warning: ignored \(problem)\n")
    }
    if json {
      print(jsonReport(key: key, code: code, reason: reason, message: message, now: now))
    } else {
      print(textReport(key: key, code: code, reason: reason, message: message, now: now))
    }
    if code != nil { throw ExitCode(1) }
  }

  /// A blocklist: its issuer, sequence and entries, and the verdict on its signature.
  private func inspectBlocklist(_ text: String) throws {
    var list: Blocklist?
    var failure: KeyDefect?
    do {
      if let trust {
        list = try BlocklistParser.verify(text, trust: readTrust(trust).trust)
      } else {
        list = try BlocklistParser.parseUnverified(text)
      }
    } catch {
      failure = error
    }
    var wrongProduct: String?
    if let list, let product, list.product != product {
      wrongProduct = "the blocklist is for \"\(list.product)\", not \"\(product)\""
    }
    let code = failure?.code ?? (wrongProduct == nil ? nil : "wrong_product")
    if json {
      var fields: [(String, String)] = [
        ("kind", jsonString("blocklist")), ("valid", code == nil ? "true" : "false"),
        ("signatureChecked", trust != nil && list != nil ? "true" : "false"),
        ("code", code.map(jsonString) ?? "null"), ("reason", failure.map { jsonString($0.reason) } ?? "null"),
        ("message", (failure?.description ?? wrongProduct).map(jsonString) ?? "null"),
      ]
      if let list {
        let entries = list.entries.map {
          "{\"serial\":\(jsonString($0.serial)),\"since\":\(jsonString($0.since.rfc3339)),\"reason\":\(jsonString($0.reason))}"
        }
        fields += [
          ("issuer", jsonString(list.issuer)), ("kid", jsonString(list.kid)), ("seq", String(list.sequence)),
          ("issuedAt", jsonString(list.issuedAt.rfc3339)), ("product", jsonString(list.product)),
          ("blocked", "[" + entries.joined(separator: ",") + "]"),
        ]
      }
      print("{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}")
    } else {
      var lines: [String] = []
      if let list {
        lines += [
          "Blocklist \(list.sequence) of issuer \(list.issuer) (kid \(list.kid))",
          "  product:   \(list.product)",
          "  issued:    \(list.issuedAt)",
          "  blocked:   \(list.entries.count) key\(list.entries.count == 1 ? "" : "s")",
        ]
        for entry in list.entries {
          lines.append(
            "    \(entry.serial)  since \(entry.since)\(entry.reason.isEmpty ? "" : "  (\(entry.reason))")")
        }
      }
      if let failure {
        lines.append("Verdict: INVALID, \(failure.code) (\(failure.reason)): \(failure.description)")
      } else if let wrongProduct {
        lines.append("Verdict: INVALID, wrong_product: \(wrongProduct)")
      } else if trust != nil {
        lines.append("Verdict: valid blocklist; signature verified with trusted issuer key \(list!.kid)")
      } else {
        lines.append("Verdict: valid blocklist; signature NOT checked (pass --trust DIR to check it)")
      }
      print(lines.joined(separator: "\n"))
    }
    if code != nil { throw ExitCode(1) }
  }

  private func textReport(key: LicenseKey?, code: String?, reason: String?, message: String, now: Timestamp)
    -> String
  {
    var lines: [String] = []
    if let key {
      let c = key.claims
      lines += [
        "Key \(c.serial)",
        "  issuer:    \(c.issuer) (kid \(key.kid), alg \(key.alg))",
        "  product:   \(c.product)",
        "  type:      \(c.typeDescription), \(c.edition.rawValue), \(c.licenseType.rawValue), \(c.units) units",
        "  slot:      \(c.slot.rawValue)",
        "  valid:     \(c.notBefore) .. \(c.expiresAt)",
        "  issued:    \(c.issuedAt)",
      ]
      if code == nil || code == "expired" || code == "not_yet_valid" {
        let left = c.expiresAt.microseconds(since: now)
        lines.append(
          "  time left: "
            + (left > 0
              ? TimeSpan(microseconds: left).inWords
              : "none (expired \(TimeSpan(microseconds: -left).inWords) ago)"))
      }
    }
    if let code {
      lines.append(
        "Verdict: INVALID, \(code)\(reason.map { $0 == code ? "" : " (\($0))" } ?? ""): \(message)")
    } else if trust != nil {
      lines.append("Verdict: valid; signature verified with trusted issuer key \(key!.kid)")
    } else {
      lines.append("Verdict: valid; signature NOT checked (pass --trust DIR to check it)")
    }
    return lines.joined(separator: "\n")
  }

  private func jsonReport(key: LicenseKey?, code: String?, reason: String?, message: String, now: Timestamp)
    -> String
  {
    var fields: [(String, String)] = [
      ("valid", code == nil ? "true" : "false"),
      (
        "signatureChecked",
        trust != nil
          && (key != nil || !["malformed", "unsupported_alg", "untrusted_issuer"].contains(reason ?? ""))
          ? "true" : "false"
      ),
      ("code", code.map(jsonString) ?? "null"),
      ("reason", reason.map(jsonString) ?? "null"),
      ("message", code == nil ? "null" : jsonString(message)),
    ]
    if let key {
      fields += [
        ("kid", jsonString(key.kid)), ("alg", jsonString(key.alg)), ("slot", jsonString(key.slot.rawValue)),
        ("claims", key.claims.json), ("notBefore", jsonString(key.claims.notBefore.rfc3339)),
        ("expiresAt", jsonString(key.claims.expiresAt.rfc3339)),
      ]
    } else {
      fields.append(("claims", "null"))
    }
    return "{" + fields.map { "\(jsonString($0.0)):\($0.1)" }.joined(separator: ",") + "}"
  }
}
