/// Adding and removing keys: the activation task, rules A1–A5 (active) and R1–R9 (reserve).
extension LicenseEngine {
  // MARK: - Requests

  /// The activation task: adds `text` as the active key (A1–A5) or as the reserve (R1–R9).
  /// A refused reserve leaves the state untouched and logs RESERVE_REJECTED.
  public func addKey(
    _ text: String, role: Role, replaceScheme: Bool = false, code: ActivationCode? = nil, now: Timestamp,
    state: LicenseState
  ) -> Decision<AddedKey> {
    switch plan(text, role: role, replaceScheme: replaceScheme, now: now, state: state) {
    case .failure(let violation):
      var actions: [Action] = []
      if role == .reserve { actions.append(.emit(.reserveRejected(violation), transitionID: nil)) }
      return Decision(state: state, actions: actions, result: .failure(violation))
    case .success(let plan):
      if plan.added.unchanged { return .unchanged(state, .success(plan.added)) }
      var next = state
      let events = apply(plan, code: code, now: now, to: &next)
      return commit(next, events: events, result: .success(plan.added), now: now)
    }
  }

  /// The same checks as ``addKey(_:role:replaceScheme:origin:now:state:)``, changing nothing
  /// and logging nothing: what would happen.
  public func checkKey(
    _ text: String, role: Role, replaceScheme: Bool = false, now: Timestamp, state: LicenseState
  ) -> Result<AddedKey, RuleViolation> {
    plan(text, role: role, replaceScheme: replaceScheme, now: now, state: state).map(\.added)
  }

  /// Removes the reserve key of `slot` (an operator's decision; logged as RESERVE_DROPPED).
  public func removeReserve(slot: Slot, now: Timestamp, state: LicenseState) -> Decision<ReserveRemoved> {
    guard case .held(var held)? = state[slot], let reserve = held.reserve else {
      let violation = RuleViolation(
        rule: .R9, code: "no_reserve",
        message:
          "The \(slot.rawValue) slot has no reserve key; nothing was removed. `agentctl status` lists the reserves.",
        slot: slot)
      return .unchanged(state, .failure(violation))
    }
    var next = state
    held.successor = .none
    next[slot] = .held(held)
    let event = ReserveDropped(
      slot: slot, key: KeyRef(reserve),
      reason: .removedByOperator(
        activeSerial: held.active.serial, renewsWithCode: held.active.activationCode != nil))
    return commit(
      next, events: [.reserveDropped(event)], result: .success(ReserveRemoved(slot: slot, key: reserve)),
      now: now)
  }

  // MARK: - Planning (the rules)

  struct Plan {
    var added: AddedKey
    /// Slots of another scheme to empty (A2, confirmed).
    var clearSlots: [Slot]
    /// The reserve dropped by A4, with the rule that condemned it.
    var droppedReserve: (key: InstalledKey, violation: RuleViolation)?
  }

  func plan(
    _ text: String, role: Role, replaceScheme: Bool, now: Timestamp, state: LicenseState
  ) -> Result<Plan, RuleViolation> {
    let entry: RuleID = role == .active ? .A1 : .R8
    let key: LicenseKey
    do {
      key = try KeyParser.verify(text, trust: trust)
    } catch {
      return .failure(
        RuleViolation(
          rule: entry, code: error.code, reason: error.reason, message: "Refused: \(error).",
          serial: KeyParser.bestEffortSerial(text)))
    }
    let claims = key.claims
    func refuse(_ rule: RuleID, _ code: String, _ message: String) -> Result<Plan, RuleViolation> {
      .failure(
        RuleViolation(
          rule: rule, code: code, message: message, serial: key.serial, slot: key.slot,
          expiresAt: key.claims.expiresAt))
    }
    guard claims.product == configuration.product else {
      return refuse(
        entry, "wrong_product",
        "Key \(key.serial) is for the product \"\(claims.product)\", not \"\(configuration.product)\"; use a key issued for this product."
      )
    }
    // B3: a key its issuer blocked is never added.
    if let blocked = blockedRefusal(key, rule: entry, state: state) { return .failure(blocked) }
    switch role {
    case .active: return planActive(key, replaceScheme: replaceScheme, now: now, state: state, refuse: refuse)
    case .reserve: return planReserve(key, now: now, state: state, refuse: refuse)
    }
  }

  func planActive(
    _ key: LicenseKey, replaceScheme: Bool, now: Timestamp, state: LicenseState,
    refuse: (RuleID, String, String) -> Result<Plan, RuleViolation>
  ) -> Result<Plan, RuleViolation> {
    let claims = key.claims
    let slot = key.slot
    guard claims.notBefore <= now else {
      return refuse(
        .A1, "not_yet_valid",
        "Key \(key.serial) is not valid before \(claims.notBefore); add it then, or add it now as a reserve key (`--reserve`)."
      )
    }
    guard now < claims.expiresAt else {
      return refuse(
        .A1, "expired", "Key \(key.serial) expired at \(claims.expiresAt); ask the vendor for a current key."
      )
    }
    let current = state[slot]?.active
    if let current, current.key.isSameKey(as: key) {
      return .success(
        Plan(
          added: AddedKey(slot: slot, role: .active, key: key, removedSerials: [], unchanged: true),
          clearSlots: []))
    }
    let otherScheme = state.slotsInUse.filter { state[$0]?.scheme != claims.scheme }
    // A5: a trial never replaces (or, through a scheme change, removes) a paid active key.
    if claims.licenseType == .trial {
      let paid = ([current] + otherScheme.map { state[$0]?.active }).compactMap { $0 }
        .filter { $0.claims.licenseType != .trial }
      if let victim = paid.first {
        return refuse(
          .A5, "trial_over_commercial",
          "Trial key \(key.serial) cannot replace the \(victim.claims.licenseType.rawValue) key \(victim.serial); a trial only starts where no paid licence is active."
        )
      }
    }
    // A2: one scheme per SVM; changing it removes every key of the old one, when confirmed.
    let removed = otherScheme.flatMap { other in
      [("active", state[other]?.active), ("reserve", state[other]?.reserve)].compactMap { role, key in
        key.map { (key: $0, slot: other, role: role) }
      }
    }
    if !removed.isEmpty && !replaceScheme {
      let list = removed.map { "\($0.slot.rawValue) \($0.role) \($0.key.serial)" }
        .joined(separator: ", ")
      return refuse(
        .A2, "scheme_conflict",
        "Key \(key.serial) uses the \(claims.scheme.rawValue) scheme, but the SVM's keys use another. Adding it would remove: \(list). Confirm with --replace-scheme (replaceScheme) to switch schemes."
      )
    }
    var plan = Plan(
      added: AddedKey(
        slot: slot, role: .active, key: key, replacedSerial: current?.serial,
        removedSerials: removed.map(\.key.serial),
        unchanged: false),
      clearSlots: otherScheme)
    // A4: the slot's reserve must still be able to follow the new active key.
    if let reserve = state[slot]?.reserve,
      let violation = reserveProblem(reserve.key, following: key, now: now)
    {
      plan.droppedReserve = (reserve, violation)
      plan.added.droppedReserveSerial = reserve.serial
    }
    return .success(plan)
  }

  func planReserve(
    _ key: LicenseKey, now: Timestamp, state: LicenseState,
    refuse: (RuleID, String, String) -> Result<Plan, RuleViolation>
  ) -> Result<Plan, RuleViolation> {
    let slot = key.slot
    guard let active = state[slot]?.active else {
      let activeKeys = state.heldSlots.map(\.held.active)
      if !activeKeys.isEmpty && state[slot]?.expired == nil {
        let types = activeKeys.map(\.claims.typeDescription).joined(separator: ", ")
        return refuse(
          .R2, "type_mismatch",
          "Reserve key \(key.serial) is a \(key.claims.typeDescription) key, but the active keys are \(types); a reserve must be of its active key's type. Use a reserve of the same type."
        )
      }
      return refuse(
        .R1, "no_active_key",
        "The \(slot.rawValue) slot has no active key, so reserve \(key.serial) cannot be added; add an active key first (`agentctl add-key FILE`)."
      )
    }
    if let reserve = state[slot]?.reserve, reserve.key.isSameKey(as: key) {
      return .success(
        Plan(
          added: AddedKey(
            slot: slot, role: .reserve, key: key, removedSerials: [], unchanged: true,
            unitsShort: state.unitsShort(key, slot: slot)),
          clearSlots: []))
    }
    if let violation = reserveProblem(key, following: active.key, now: now) {
      return .failure(violation)
    }
    return .success(
      Plan(
        added: AddedKey(
          slot: slot, role: .reserve, key: key, replacedSerial: state[slot]?.reserve?.serial,
          removedSerials: [],
          unchanged: false, unitsShort: state.unitsShort(key, slot: slot)),
        clearSlots: []))
  }

  /// Rules R2–R7 for `reserve` next to `active`; nil when the reserve can follow it.
  func reserveProblem(_ reserve: LicenseKey, following active: LicenseKey, now: Timestamp)
    -> RuleViolation?
  {
    let r = reserve.claims
    let a = active.claims
    func violation(_ rule: RuleID, _ code: String, _ message: String) -> RuleViolation {
      RuleViolation(
        rule: rule, code: code, message: message, serial: reserve.serial, slot: reserve.slot,
        expiresAt: r.expiresAt)
    }
    if reserve.isSameKey(as: active) {
      return violation(
        .R7, "duplicate", "Key \(reserve.serial) is the active key itself; a reserve must be another key.")
    }
    if r.scheme != a.scheme || r.osType != a.osType {
      return violation(
        .R2, "type_mismatch",
        "Reserve key \(reserve.serial) is a \(r.typeDescription) key but the active key \(active.serial) is \(a.typeDescription); use a reserve of the same type."
      )
    }
    if r.edition != a.edition {
      return violation(
        .R3, "edition_mismatch",
        "Reserve key \(reserve.serial) is \(r.edition.rawValue) edition but the active key \(active.serial) is \(a.edition.rawValue); use a reserve of the same edition."
      )
    }
    if r.licenseType != .commercial {
      return violation(
        .R4, "not_reservable",
        "Key \(reserve.serial) is a \(r.licenseType.rawValue) key; only commercial keys can be reserve keys. Add it as the active key instead, or use a commercial key."
      )
    }
    if r.expiresAt <= now {
      return violation(
        .R6, "expired", "Reserve key \(reserve.serial) already expired at \(r.expiresAt); use a current key."
      )
    }
    if r.expiresAt <= a.expiresAt {
      return violation(
        .R5, "expires_before_active",
        "Reserve key \(reserve.serial) expires at \(r.expiresAt), not after the active key \(active.serial) (\(a.expiresAt)); it would never serve. Use a reserve that ends later."
      )
    }
    if r.notBefore > a.expiresAt {
      return violation(
        .R6, "not_valid_at_takeover",
        "Reserve key \(reserve.serial) is valid only from \(r.notBefore), after the active key \(active.serial) expires (\(a.expiresAt)); the licence would lapse in between. Use a reserve valid from \(a.expiresAt) at the latest."
      )
    }
    return nil
  }

  // MARK: - Applying

  /// Carries out an accepted plan on `state`; the events that say so.
  func apply(_ plan: Plan, code: ActivationCode?, now: Timestamp, to state: inout LicenseState)
    -> [LicenseEvent]
  {
    let added = plan.added
    let slot = added.slot
    let installed = InstalledKey(key: added.key, addedAt: now, activationCode: code)
    switch added.role {
    case .active:
      for other in plan.clearSlots { state[other] = nil }
      let reserve = plan.droppedReserve == nil ? state[slot]?.reserve : nil
      state[slot] = .held(
        HeldSlot(
          active: installed, warned: passedThresholds(of: added.key.claims.expiresAt, at: now),
          successor: reserve.map(Successor.reserve) ?? .none))
      var events: [LicenseEvent] = [
        .activeAdded(
          ActiveAdded(
            slot: slot, key: KeyRef(added.key), replacedSerial: added.replacedSerial,
            removedSerials: added.removedSerials))
      ]
      if let (dropped, violation) = plan.droppedReserve {
        events.append(
          .reserveDropped(
            ReserveDropped(
              slot: slot, key: KeyRef(dropped),
              reason: .cannotFollow(newActive: KeyRef(added.key), rule: violation.ruleAndCode))))
      }
      return events
    case .reserve:
      // planReserve accepted the reserve next to the slot's active key.
      guard case .held(var held)? = state[slot] else { return [] }
      var events: [LicenseEvent] = []
      if let pending = held.pending {
        // C6: an operator's reserve replaces the key obtained ahead with the code.
        events.append(
          .reserveDropped(
            ReserveDropped(
              slot: slot, key: KeyRef(pending),
              reason: .replacedByOperator(activeSerial: held.active.serial, reserveSerial: added.key.serial)))
        )
      }
      held.successor = .reserve(installed)
      state[slot] = .held(held)
      events.append(
        .reserveAdded(
          ReserveAdded(
            slot: slot, key: KeyRef(added.key), replacedSerial: added.replacedSerial,
            active: KeyRef(held.active), unitsShort: added.unitsShort)))
      return events
    }
  }
}
