import SimpleJSON

/// Blocklists (rule B1, contract §1 "Blocklists"): an issuer's signed list of the keys it
/// issued and has blocked. A JWS like a key, header `"typ":"license-blocklist+jwt"`, with
/// the claims `iss`, `typ` (`license-blocklist`), `seq`, `iat`, `product` and `blocked`
/// (every key of the issuer blocked so far: a list replaces the issuer's previous one).

/// One blocked key of a list.
public struct BlockedEntry: Sendable, Equatable, Codable {
  /// The key's serial (`jti`), of the list's own issuer.
  public var serial: String
  /// When the issuer blocked it.
  public var since: Timestamp
  /// Why, in the issuer's words (bounded).
  public var reason: String

  public init(serial: String, since: Timestamp, reason: String) {
    self.serial = serial
    self.since = since
    self.reason = reason
  }
}

/// A blocklist, read and (by ``BlocklistParser/verify(_:trust:)``) verified.
public struct Blocklist: Sendable, Equatable {
  public static let headerType = "license-blocklist+jwt"
  public static let claimType = "license-blocklist"

  /// The list as it was signed (kept, so that it can be checked again after a restart).
  public var compact: String
  /// The issuer key that signed it.
  public var kid: String
  /// The issuer (`iss`): the list blocks only keys whose `iss` is this.
  public var issuer: String
  /// Increasing with each list the issuer publishes.
  public var sequence: Int
  public var issuedAt: Timestamp
  public var product: String
  public var entries: [BlockedEntry]

  public init(
    compact: String, kid: String, issuer: String, sequence: Int, issuedAt: Timestamp, product: String,
    entries: [BlockedEntry]
  ) {
    self.compact = compact
    self.kid = kid
    self.issuer = issuer
    self.sequence = sequence
    self.issuedAt = issuedAt
    self.product = product
    self.entries = entries
  }

  /// The entry for `key`, when this list blocks it: a key of the list's own issuer.
  public func entry(for key: LicenseKey) -> BlockedEntry? {
    guard key.claims.issuer == issuer else { return nil }
    return entries.first { $0.serial == key.serial }
  }

  /// The claims as JSON, in a fixed order (for signing).
  var claimsJSON: String {
    let blocked = entries.map {
      "{\"serial\":\(jsonString($0.serial)),\"since\":\($0.since.jsonSeconds),\"reason\":\(jsonString($0.reason))}"
    }
    return
      "{\"iss\":\(jsonString(issuer)),\"typ\":\(jsonString(Self.claimType)),\"seq\":\(sequence),\"iat\":\(issuedAt.jsonSeconds),\"product\":\(jsonString(product)),\"blocked\":[\(blocked.joined(separator: ","))]}"
  }
}

/// Why a blocklist could not be read: the key defects of its JWS, or a claim of its own.
public enum BlocklistParser {
  /// The longest list read: far above any issuer's blocked keys, a bound on what enters.
  public static let maximumLength = 1 << 20
  /// The most entries a list may have.
  public static let maximumEntries = 10_000
  /// The longest reason kept.
  public static let maximumReasonLength = 300

  /// Reads a blocklist and checks its signature against `trust`, then its claims; the
  /// signature is checked before any claim is believed.
  public static func verify(_ text: String, trust: TrustStore) throws(KeyDefect) -> Blocklist {
    guard text.utf8.count <= maximumLength + 4096 else {
      throw .malformed("the blocklist is longer than \(maximumLength) bytes")
    }
    let parts = try KeyParser.split(text)
    guard parts.kid.utf8.count <= KeyParser.maximumClaimLength else {
      throw .claimTooLong("kid", limit: KeyParser.maximumClaimLength)
    }
    guard let issuerKey = trust.keys[parts.kid] else { throw .untrustedIssuer(kid: parts.kid) }
    guard
      Ed25519.verify(signature: parts.signature, message: parts.signingInput, publicKey: issuerKey.publicKey)
    else { throw .badSignature }
    return try read(parts)
  }

  /// Reads a blocklist without checking its signature (`license-keytool inspect` without
  /// a trust directory).
  public static func parseUnverified(_ text: String) throws(KeyDefect) -> Blocklist {
    guard text.utf8.count <= maximumLength + 4096 else {
      throw .malformed("the blocklist is longer than \(maximumLength) bytes")
    }
    return try read(try KeyParser.split(text))
  }

  /// Whether `text` is a blocklist rather than a key (by its header's `typ`), when it can be
  /// read at all.
  public static func looksLikeBlocklist(_ text: String) -> Bool {
    (try? KeyParser.split(text))?.typ == Blocklist.headerType
  }

  private static func read(_ parts: KeyParser.Parts) throws(KeyDefect) -> Blocklist {
    guard parts.typ == Blocklist.headerType else {
      throw .malformed(
        "the header's typ is \(parts.typ.map { "\"\($0)\"" } ?? "absent"), not \"\(Blocklist.headerType)\": not a blocklist"
      )
    }
    let payload = parts.payload
    func string(_ name: String) throws(KeyDefect) -> String {
      guard let value = payload[name], value != .null else { throw .missingClaim(name) }
      guard case .string(let text) = value, !text.isEmpty else {
        throw .illTypedClaim(name, expected: "a non-empty string")
      }
      guard text.utf8.count <= KeyParser.maximumClaimLength else {
        throw .claimTooLong(name, limit: KeyParser.maximumClaimLength)
      }
      try printable(text, name)
      return text
    }
    /// A name shown in messages and logs (an issuer, a serial): no control or format
    /// character, which would make a line read otherwise than it is.
    func printable(_ text: String, _ name: String) throws(KeyDefect) {
      guard ExternalText.bounded(text, limit: Int.max) == text else {
        throw .illTypedClaim(name, expected: "text without control or format characters")
      }
    }
    func instant(_ value: JSONValue?, _ name: String) throws(KeyDefect) -> Timestamp {
      guard let value, value != .null else { throw .missingClaim(name) }
      guard case .number(let seconds) = value, let time = Timestamp(secondsSinceEpoch: seconds) else {
        throw .illTypedClaim(name, expected: "a number of seconds since the epoch")
      }
      return time
    }
    let issuer = try string("iss")
    guard try string("typ") == Blocklist.claimType else {
      throw .illTypedClaim("typ", expected: "\"\(Blocklist.claimType)\"")
    }
    guard let seqValue = payload["seq"], seqValue != .null else { throw .missingClaim("seq") }
    guard case .number(let seq) = seqValue, seq.rounded() == seq, seq >= 0, seq < 1e15 else {
      throw .illTypedClaim("seq", expected: "an integer of 0 or more")
    }
    let issuedAt = try instant(payload["iat"], "iat")
    let product = try string("product")
    guard let blockedValue = payload["blocked"], blockedValue != .null else { throw .missingClaim("blocked") }
    guard case .array(let items) = blockedValue else {
      throw .illTypedClaim("blocked", expected: "an array of {serial, since, reason}")
    }
    guard items.count <= maximumEntries else {
      throw .malformed("the blocklist has \(items.count) entries; at most \(maximumEntries) are read")
    }
    var entries: [BlockedEntry] = []
    for (index, item) in items.enumerated() {
      let name = "blocked[\(index)]"
      guard case .object(let entry) = item else {
        throw .illTypedClaim(name, expected: "an object {serial, since, reason}")
      }
      guard case .string(let serial)? = entry["serial"], !serial.isEmpty else {
        throw .illTypedClaim(name + ".serial", expected: "a non-empty string")
      }
      guard serial.utf8.count <= KeyParser.maximumClaimLength else {
        throw .claimTooLong(name + ".serial", limit: KeyParser.maximumClaimLength)
      }
      try printable(serial, name + ".serial")
      let since = try instant(entry["since"], name + ".since")
      var reason = ""
      if let value = entry["reason"], value != .null {
        guard case .string(let text) = value else {
          throw .illTypedClaim(name + ".reason", expected: "a string")
        }
        reason = ExternalText.bounded(text, limit: maximumReasonLength)
      }
      entries.append(BlockedEntry(serial: serial, since: since, reason: reason))
    }
    return Blocklist(
      compact: parts.compact, kid: parts.kid, issuer: issuer, sequence: Int(seq), issuedAt: issuedAt,
      product: product, entries: entries)
  }

  /// Signs a blocklist with the issuer's private JWK (`license-keytool blocklist`, tests).
  /// `list.compact` and `list.kid` are ignored (they come from the signature).
  public static func sign(_ list: Blocklist, with issuer: JWK, alg: String = "EdDSA") throws(KeyDefect)
    -> String
  {
    guard KeyParser.acceptedAlgorithms.contains(alg) else { throw .unsupportedAlg(alg) }
    guard let seed = issuer.seed else { throw .malformed("the signer JWK has no private part \"d\"") }
    let header =
      "{\"alg\":\(jsonString(alg)),\"typ\":\(jsonString(Blocklist.headerType)),\"kid\":\(jsonString(issuer.kid))}"
    let signingInput = Base64URL.encode(header.utf8) + "." + Base64URL.encode(list.claimsJSON.utf8)
    guard let signature = Ed25519.sign(message: Array(signingInput.utf8), seed: seed) else {
      throw .malformed("the signer JWK's private key is unusable")
    }
    return signingInput + "." + Base64URL.encode(signature)
  }
}

/// A list the agent keeps (B1): the issuer's list with the highest `seq` it has seen, as
/// signed, with when it first learned of each entry (a blocked active key's grace runs from
/// then, rule B2, so that a newer list repeating an entry does not move it).
public struct StoredBlocklist: Sendable, Equatable, Codable {
  public struct Entry: Sendable, Equatable, Codable {
    public var serial: String
    public var since: Timestamp
    public var reason: String
    public var learnedAt: Timestamp
  }
  /// The SHA-256 of the list as signed (``SHA256/digest(_:)``): the same list given again
  /// is known by it, before it is parsed. The text itself is not kept: it is as large as
  /// the entries, and the state is written at every change.
  public var digest: String
  public var issuer: String
  public var sequence: Int
  public var receivedAt: Timestamp
  public var entries: [Entry]

  public init(digest: String, issuer: String, sequence: Int, receivedAt: Timestamp, entries: [Entry]) {
    self.digest = digest
    self.issuer = issuer
    self.sequence = sequence
    self.receivedAt = receivedAt
    self.entries = entries
  }

  enum CodingKeys: String, CodingKey { case digest, compact, issuer, sequence, receivedAt, entries }

  public init(from decoder: Decoder) throws {
    let container = try decoder.container(keyedBy: CodingKeys.self)
    // A state written by a build that kept the text has its digest computed once.
    let digest =
      try container.decodeIfPresent(String.self, forKey: .digest)
      ?? SHA256.digest(try container.decode(String.self, forKey: .compact))
    // The entries as one text (below), or, from a build before it, as an array.
    let entries: [Entry]
    if let text = try? container.decode(String.self, forKey: .entries) {
      guard let read = Self.entries(from: text) else {
        throw DecodingError.dataCorruptedError(
          forKey: .entries, in: container,
          debugDescription: "a blocklist entry is not serial, since, learnedAt, reason")
      }
      entries = read
    } else {
      entries = try container.decode([Entry].self, forKey: .entries)
    }
    self.init(
      digest: digest, issuer: try container.decode(String.self, forKey: .issuer),
      sequence: try container.decode(Int.self, forKey: .sequence),
      receivedAt: try container.decode(Timestamp.self, forKey: .receivedAt), entries: entries)
  }

  /// The entries are written as one text, a line per entry with its serial, `since` and
  /// `learnedAt` (microseconds) and reason separated by tabs (none of which may hold a tab
  /// or a line break: serials with control characters are refused, reasons lose them): a
  /// list of 10,000 entries is a tenth of its size as JSON objects, and it is encoded at
  /// every state write.
  public func encode(to encoder: Encoder) throws {
    var container = encoder.container(keyedBy: CodingKeys.self)
    try container.encode(digest, forKey: .digest)
    try container.encode(issuer, forKey: .issuer)
    try container.encode(sequence, forKey: .sequence)
    try container.encode(receivedAt, forKey: .receivedAt)
    var text = ""
    text.reserveCapacity(entries.count * 64)
    for entry in entries {
      text +=
        "\(entry.serial)\t\(entry.since.microseconds)\t\(entry.learnedAt.microseconds)\t\(entry.reason)\n"
    }
    try container.encode(text, forKey: .entries)
  }

  static func entries(from text: String) -> [Entry]? {
    var entries: [Entry] = []
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
      let fields = line.split(separator: "\t", maxSplits: 3, omittingEmptySubsequences: false)
      guard fields.count == 4, let since = Int64(fields[1]), let learned = Int64(fields[2]) else {
        return nil
      }
      entries.append(
        Entry(
          serial: String(fields[0]), since: Timestamp(microseconds: since), reason: String(fields[3]),
          learnedAt: Timestamp(microseconds: learned)))
    }
    return entries
  }

  public func entry(serial: String) -> Entry? { entries.first { $0.serial == serial } }
}

/// A key of this SVM that a list blocks, for AddBlocklist's reply and the status.
public struct BlockedKey: Sendable, Equatable {
  public var slot: Slot
  public var role: Role
  /// `pending`: the key renewed ahead with the activation code.
  public var pending: Bool
  public var serial: String
  public var since: Timestamp
  public var reason: String
  /// Dropped at once (a reserve or pending key, B3); an active key stays (B2).
  public var dropped: Bool
  /// An active key's grace end (B2).
  public var graceEndsAt: Timestamp?
}

/// What a blocklist did, for the reply.
public struct BlocklistAdded: Sendable, Equatable {
  public var issuer: String
  public var sequence: Int
  public var entries: Int
  /// The same list was already kept: nothing changed.
  public var unchanged: Bool
  /// The keys of this SVM it blocks.
  public var blocks: [BlockedKey]
}

extension LicenseState {
  /// The kept list whose signed text has this digest.
  func blocklist(digest: String) -> StoredBlocklist? { blocklists.values.first { $0.digest == digest } }

  /// The entry of a kept list that blocks `key` (a key of that list's issuer), if any (B1).
  public func blockEntry(for key: LicenseKey) -> StoredBlocklist.Entry? {
    blocklists[key.claims.issuer]?.entry(serial: key.serial)
  }
}

extension LicenseEngine {
  /// The most issuers whose lists are kept (`too_many_blocklists`): far above the issuers a
  /// vendor has, a bound on the state (a list's entries are written at every change).
  public static let maximumBlocklists = 16

  /// B1: a blocklist from the directory or the control interface. Verified as a key is, for
  /// this product; kept per issuer when its `seq` is higher than the kept list's (an older
  /// one, or another list with the same `seq`, is `blocklist_rollback`; the same list again
  /// changes nothing). B3: a reserve or pending key it blocks is dropped at once. B2: a blocked
  /// active key keeps working until the end of its grace.
  public func addBlocklist(_ text: String, now: Timestamp, state: LicenseState) -> Decision<BlocklistAdded> {
    // The same list again (a reload, a fleet run) is known by its digest, before any parsing.
    let digest = SHA256.digest(text.trimmingWhitespace())
    if let kept = state.blocklist(digest: digest) { return unchangedBlocklist(kept, state: state) }
    switch verifiedBlocklist(text) {
    case .failure(let violation): return .unchanged(state, .failure(violation))
    case .success(let list): return merge(list, digest: digest, now: now, state: state)
    }
  }

  /// The kept list `text` is, known by its digest without parsing it; nil when it is not.
  public func keptBlocklist(_ text: String, in state: LicenseState) -> StoredBlocklist? {
    state.blocklist(digest: SHA256.digest(text.trimmingWhitespace()))
  }

  /// B1's checks of a list that change nothing: its signature by a trusted issuer, its
  /// claims and bounds, its product. The costly part (a list may be 1 MiB), which the
  /// control plane does on its own queue, so that the agent's queue only merges.
  public func verifiedBlocklist(_ text: String) -> Result<Blocklist, RuleViolation> {
    func refuse(_ code: String, _ message: String, reason: String? = nil) -> Result<Blocklist, RuleViolation>
    {
      .failure(RuleViolation(rule: .B1, code: code, reason: reason, message: message))
    }
    let list: Blocklist
    do {
      list = try BlocklistParser.verify(text, trust: trust)
    } catch {
      if case .untrustedIssuer = error { return refuse("untrusted_issuer", "Refused: \(error).") }
      return refuse(
        "invalid_blocklist", "Refused: \(error.description.replacing("the key", with: "the blocklist")).",
        reason: error.reason)
    }
    guard list.product == configuration.product else {
      return refuse(
        "wrong_product",
        "Blocklist \(list.sequence) of \(list.issuer) is for the product \"\(list.product)\", not \"\(configuration.product)\"."
      )
    }
    return .success(list)
  }

  func unchangedBlocklist(_ kept: StoredBlocklist, state: LicenseState) -> Decision<BlocklistAdded> {
    .unchanged(
      state,
      .success(
        BlocklistAdded(
          issuer: kept.issuer, sequence: kept.sequence, entries: kept.entries.count, unchanged: true,
          blocks: blockedKeys(in: state, dropping: false))))
  }

  /// B1 for a list ``verifiedBlocklist(_:)`` accepted (with this engine's trust, which the
  /// caller checks when it verified it elsewhere): kept when newer than the issuer's list.
  public func addBlocklist(_ list: Blocklist, now: Timestamp, state: LicenseState) -> Decision<BlocklistAdded>
  {
    merge(list, digest: SHA256.digest(list.compact), now: now, state: state)
  }

  /// ``addBlocklist(_:now:state:)`` with the digest of the list's signed text.
  private func merge(_ list: Blocklist, digest: String, now: Timestamp, state: LicenseState) -> Decision<
    BlocklistAdded
  > {
    func refuse(_ code: String, _ message: String) -> Decision<BlocklistAdded> {
      .unchanged(state, .failure(RuleViolation(rule: .B1, code: code, message: message)))
    }
    if let kept = state.blocklist(digest: digest) { return unchangedBlocklist(kept, state: state) }
    if let kept = state.blocklists[list.issuer] {
      guard list.sequence > kept.sequence else {
        return refuse(
          "blocklist_rollback",
          "Blocklist \(list.sequence) of \(list.issuer) is not newer than the one kept (\(kept.sequence)): an older list cannot undo a newer one. Use the issuer's latest list."
        )
      }
    }
    guard state.blocklists[list.issuer] != nil || state.blocklists.count < Self.maximumBlocklists else {
      return refuse(
        "too_many_blocklists",
        "The agent already keeps the lists of \(state.blocklists.count) issuers, the most it keeps; a list of \(list.issuer) is not kept."
      )
    }
    var next = state
    // When it first learned of each entry, by serial (one lookup per entry: a list replaces
    // one of up to 10,000 entries).
    let learned = Dictionary(
      (state.blocklists[list.issuer]?.entries ?? []).map { ($0.serial, $0.learnedAt) }, uniquingKeysWith: min)
    next.blocklists[list.issuer] = StoredBlocklist(
      digest: digest, issuer: list.issuer, sequence: list.sequence, receivedAt: now,
      entries: list.entries.map { entry in
        StoredBlocklist.Entry(
          serial: entry.serial, since: entry.since, reason: entry.reason,
          learnedAt: learned[entry.serial] ?? now)
      })
    // B3 first: a blocked reserve or pending key is dropped; then B2 for the active key, so
    // that its KEY_BLOCKED says what takes over once the drops are made.
    let dropping = blockedKeys(in: next, dropping: true).filter(\.dropped)
    var events: [LicenseEvent] = []
    for blocked in dropping {
      guard case .held(var held)? = next[blocked.slot] else { continue }
      let key: InstalledKey
      switch held.successor {
      case .reserve(let reserve): key = reserve
      case .pending(let pending): key = pending
      default: continue
      }
      events.append(
        .keyBlocked(
          KeyBlocked(
            slot: blocked.slot, key: KeyRef(key), role: blocked.pending ? .pending : .reserve,
            since: blocked.since, reason: blocked.reason)))
      held.successor = .none
      next[blocked.slot] = .held(held)
      events.append(
        .reserveDropped(
          ReserveDropped(
            slot: blocked.slot, key: KeyRef(key),
            reason: .blocked(activeSerial: held.active.serial, since: blocked.since, why: blocked.reason))))
    }
    events += applyingBlocks(&next, now: now)
    let blocks = blockedKeys(in: next, dropping: false) + dropping
    return commit(
      next, events: events,
      result: .success(
        BlocklistAdded(
          issuer: list.issuer, sequence: list.sequence, entries: list.entries.count, unchanged: false,
          blocks: blocks)),
      now: now)
  }

  /// B2: gives each held slot's active key the block its kept lists say (its grace from
  /// when the agent learned of the entry, fixed then), or lifts a block a newer list no
  /// longer has. KEY_BLOCKED for each key newly blocked. Thresholds already passed for the
  /// grace's end are not logged late (W1).
  func applyingBlocks(_ state: inout LicenseState, now: Timestamp) -> [LicenseEvent] {
    var events: [LicenseEvent] = []
    for (slot, held) in state.heldSlots {
      var updated = held
      if let entry = state.blockEntry(for: held.active.key) {
        if var block = held.blocked {
          // A newer list that says another `since` or reason: shown, the grace kept.
          guard block.since != entry.since || block.reason != entry.reason else { continue }
          block.since = entry.since
          block.reason = entry.reason
          updated.blocked = block
          state[slot] = .held(updated)
          continue
        }
        updated.blocked = ActiveBlock(
          since: entry.since, reason: entry.reason, learnedAt: entry.learnedAt,
          graceEndsAt: entry.learnedAt + configuration.blockingGrace)
        updated.warned.formUnion(passedThresholds(of: updated.endsAt, at: now))
        events.append(
          .keyBlocked(
            KeyBlocked(
              slot: slot, key: KeyRef(held.active), role: .active, since: entry.since, reason: entry.reason,
              graceEndsAt: updated.endsAt, then: whatTakesOver(updated))))
      } else if held.blocked != nil {
        // A newer list unblocks it: its deadlines are its `exp`'s again.
        updated.blocked = nil
        updated.warned = passedThresholds(of: held.active.expiresAt, at: now)
      } else {
        continue
      }
      state[slot] = .held(updated)
    }
    return events
  }

  /// The keys of `state` its kept lists block; a reserve or pending key is marked `dropped`
  /// when `dropping`.
  func blockedKeys(in state: LicenseState, dropping: Bool) -> [BlockedKey] {
    var found: [BlockedKey] = []
    for (slot, held) in state.heldSlots {
      func add(_ key: InstalledKey, _ role: Role, pending: Bool) {
        guard let entry = state.blockEntry(for: key.key) else { return }
        found.append(
          BlockedKey(
            slot: slot, role: role, pending: pending, serial: key.serial, since: entry.since,
            reason: entry.reason,
            dropped: dropping && role == .reserve,
            graceEndsAt: role == .active ? held.blocked.map { _ in held.endsAt } : nil))
      }
      add(held.active, .active, pending: false)
      if let reserve = held.reserve { add(reserve, .reserve, pending: false) }
      if let pending = held.pending { add(pending, .reserve, pending: true) }
    }
    return found
  }

  /// B3: `key_blocked`, when a kept list blocks `key`.
  func blockedRefusal(_ key: LicenseKey, rule: RuleID, state: LicenseState) -> RuleViolation? {
    guard let entry = state.blockEntry(for: key) else { return nil }
    let why = entry.reason.isEmpty ? "" : " (\(entry.reason))"
    return RuleViolation(
      rule: rule, code: "key_blocked",
      message:
        "Key \(key.serial) was blocked by its issuer \(key.claims.issuer) on \(entry.since)\(why); it is not added. Ask the vendor for a key that is not blocked.",
      serial: key.serial, slot: key.slot, expiresAt: key.claims.expiresAt)
  }
}
