import FoundationEssentials
import Glibc
import LicenseCore
import StandardIO

/// Where the agent keeps what it owns. One implementation writes files; tests may use others.
public protocol StateStore: Sendable {
  /// Reads the state (an empty state when there is none yet).
  func load() throws(StateStoreError) -> LoadedState
  /// Makes `state` durable, whole, before returning.
  func save(_ state: LicenseState) throws(StateStoreError)
}

/// The result of a load: the state, and the recovery that was needed, if any.
public struct LoadedState: Sendable, Equatable {
  public var state: LicenseState
  /// Set when the state file was unreadable and the last good copy was restored; the runtime
  /// logs it as STATE_RECOVERED (``JournalEvent/stateRecovered(error:file:)``).
  public var recovery: Recovery?

  public init(state: LicenseState, recovery: Recovery?) {
    self.state = state
    self.recovery = recovery
  }

  public struct Recovery: Sendable, Equatable {
    /// What was wrong with the state file.
    public var error: String
    /// The damaged file, kept for inspection.
    public var quarantinedFile: String
  }
}

/// Why the state could not be loaded or saved, with the file and what to do.
public struct StateStoreError: Error, Equatable, Sendable, CustomStringConvertible {
  public var file: String
  public var problem: String
  public var remedy: String

  public init(file: String, problem: String, remedy: String) {
    self.file = file
    self.problem = problem
    self.remedy = remedy
  }

  public var description: String { "\(file): \(problem). \(remedy)" }
}

/// The named steps of a state write, where a test may inject a crash.
public enum WriteStep: String, Sendable, CaseIterable {
  /// The temporary file holds the new state (not yet synced).
  case tempWritten
  /// The temporary file was fsynced.
  case tempSynced
  /// The previous good copy (`state.json.prev`) now links to the current state.
  case previousKept
  /// `state.json` was replaced by the temporary file (rename).
  case renamed
  /// The directory was fsynced: the write is durable.
  case directorySynced
}

/// Writes the whole state atomically to `state.json` in the state directory.
///
/// A write is: new content to `state.json.tmp`, fsync; hard-link the current `state.json`
/// to `state.json.prev` (the last good copy, kept by a link and a rename, so it is always
/// whole); rename the temporary file over `state.json`; fsync the directory. A crash at any
/// point leaves `state.json` either old or new, never partial, and a leftover temporary file
/// is removed at the next load.
///
/// A damaged `state.json` (truncated, corrupt, hand-edited wrongly) is never silently
/// replaced: it is renamed to `state.json.corrupt-<time>` and kept, the last good copy is
/// restored, and the load reports a ``LoadedState/Recovery`` for STATE_RECOVERED. If the last
/// good copy is damaged too, or the file was written by a newer version, the load fails with
/// a message that names the file and what to do, and nothing is changed on disk.
public final class FileStateStore: StateStore {
  public let directory: String
  public var stateFile: String { directory + "/state.json" }
  var tempFile: String { directory + "/state.json.tmp" }
  var previousFile: String { directory + "/state.json.prev" }
  var previousTempFile: String { directory + "/state.json.prev.tmp" }

  /// Called at each named step of a write; tests throw from it to simulate a crash there.
  private let crashPoint: (@Sendable (WriteStep) throws -> Void)?

  /// Opens the store in `directory`, creating it with mode 0700 when missing and tightening
  /// it to 0700 when it is wider (the state holds licence keys).
  public init(directory: String, crashPoint: (@Sendable (WriteStep) throws -> Void)? = nil)
    throws(StateStoreError)
  {
    self.directory = directory
    self.crashPoint = crashPoint
    var info = stat()
    if stat(directory, &info) != 0 {
      guard mkdir(directory, 0o700) == 0 else {
        throw StateStoreError(
          file: directory, problem: "cannot create the state directory (\(errnoText()))",
          remedy:
            "Create it, owned by the agent's user, with mode 0700 (StateDirectory= does this under systemd).")
      }
      // 0700 whatever the umask the agent was started with (a umask taking the owner's
      // search bit would leave the agent unable to use its own directory).
      _ = chmod(directory, 0o700)
    } else if (info.st_mode & S_IFMT) != S_IFDIR {
      throw StateStoreError(
        file: directory, problem: "is not a directory", remedy: "Point STATE_DIRECTORY at a directory.")
    } else if info.st_mode & 0o077 != 0 {
      _ = chmod(directory, 0o700)
    }
  }

  // MARK: Load

  public func load() throws(StateStoreError) -> LoadedState {
    // Leftovers of a write that was interrupted: never the current state, safe to drop.
    unlink(tempFile)
    unlink(previousTempFile)
    let current = read(stateFile)
    switch current {
    case .missing:
      if case .valid(let state) = read(previousFile) {
        // The state file was deleted by hand, yet a good copy exists: restore rather than
        // start empty and lose keys.
        try write(state, steps: false)
        return LoadedState(
          state: state, recovery: .init(error: "state.json was missing", quarantinedFile: previousFile))
      }
      return LoadedState(state: LicenseState(), recovery: nil)
    case .valid(let state):
      return LoadedState(state: state, recovery: nil)
    case .newerSchema(let version):
      throw StateStoreError(
        file: stateFile,
        problem:
          "was written by a newer license-agent (state schema \(version), this version reads up to \(LicenseState.currentSchemaVersion))",
        remedy: "Install that newer version again; do not edit or delete the file.")
    case .damaged(let problem):
      guard case .valid(let state) = read(previousFile) else {
        throw StateStoreError(
          file: stateFile, problem: "is damaged (\(problem)) and no good previous copy exists",
          remedy:
            "The agent will not start over it. Move the file aside (keep it for support), then restart the agent and add the keys again with `agentctl add-key`."
        )
      }
      let quarantine = stateFile + ".corrupt-" + String(Int64(Date().timeIntervalSince1970))
      guard rename(stateFile, quarantine) == 0 else {
        throw StateStoreError(
          file: stateFile, problem: "is damaged (\(problem)) and could not be moved aside (\(errnoText()))",
          remedy: "Check the state directory's permissions and free space, then restart the agent.")
      }
      try write(state, steps: false)
      return LoadedState(state: state, recovery: .init(error: problem, quarantinedFile: quarantine))
    }
  }

  private enum ReadResult {
    case missing
    case valid(LicenseState)
    case newerSchema(Int)
    case damaged(String)
  }

  private func read(_ path: String) -> ReadResult {
    guard let data = FileManager.default.contents(atPath: path) else {
      return access(path, F_OK) == 0 ? .damaged("unreadable: \(errnoText())") : .missing
    }
    guard !data.isEmpty else { return .damaged("the file is empty") }
    struct Header: Decodable { var schemaVersion: Int }
    guard let header = try? JSONDecoder().decode(Header.self, from: data) else {
      return .damaged("not a JSON state document (truncated or corrupt)")
    }
    guard header.schemaVersion <= LicenseState.currentSchemaVersion else {
      return .newerSchema(header.schemaVersion)
    }
    do {
      return .valid(try JSONDecoder().decode(LicenseState.self, from: data))
    } catch {
      return .damaged("invalid content: \(Self.describe(error))")
    }
  }

  private static func describe(_ error: Error) -> String {
    switch error {
    case DecodingError.dataCorrupted(let context), DecodingError.typeMismatch(_, let context),
      DecodingError.valueNotFound(_, let context), DecodingError.keyNotFound(_, let context):
      let path = context.codingPath.map(\.stringValue).joined(separator: ".")
      return path.isEmpty ? context.debugDescription : "\(path): \(context.debugDescription)"
    default:
      return "\(error)"
    }
  }

  // MARK: Save

  public func save(_ state: LicenseState) throws(StateStoreError) {
    try write(state, steps: true)
  }

  /// The older versions the state can be rewritten for (`license-agent --write-state-for`).
  public enum OlderRelease: String, Sendable, CaseIterable {
    case v01 = "0.1"
    case v02 = "0.2"
    case v03 = "0.3"
    case v04 = "0.4"
  }

  /// Rewrites the state in the form an older version reads, before a downgrade
  /// (`license-agent --write-state-for 0.1|0.2|0.3|0.4`, which the package's prerm runs when
  /// an older version replaces it; each refuses what it cannot read): schema 1 for 0.1.x;
  /// schema 2 without what 0.2.x, 0.3.x or 0.4.x cannot read (``LicenseState/readableBy020``,
  /// ``LicenseState/readableBy030``, ``LicenseState/readableBy040``). The last good copy too, so that
  /// nothing the older version may read is of a newer form. The agent must not be running. A
  /// later start of this version reads them and writes its own form back.
  public func downgrade(for release: OlderRelease) throws(StateStoreError) -> LoadedState {
    let loaded = try load()
    let old: any Encodable
    switch release {
    case .v01: old = loaded.state.version1
    case .v02: old = loaded.state.readableBy020
    case .v03: old = loaded.state.readableBy030
    case .v04: old = loaded.state.readableBy040
    }
    try write(old, steps: false)
    try write(old, steps: false)
    return loaded
  }

  /// ``downgrade(for:)`` by schema, as `--write-state-schema 1|2` names it: 1 for 0.1.x, 2
  /// for 0.2.x.
  public func downgrade(toSchema schema: Int) throws(StateStoreError) -> LoadedState {
    try downgrade(for: schema == 1 ? .v01 : .v02)
  }

  private func write(_ state: some Encodable, steps: Bool) throws(StateStoreError) {
    let encoder = JSONEncoder()
    encoder.outputFormatting = [.sortedKeys, .prettyPrinted]
    let data: Data
    do { data = try encoder.encode(state) } catch {
      throw StateStoreError(
        file: stateFile, problem: "cannot encode the state (\(error))", remedy: "Report this bug.")
    }
    func step(_ name: WriteStep) throws(StateStoreError) {
      guard steps, let crashPoint else { return }
      do { try crashPoint(name) } catch {
        throw StateStoreError(
          file: stateFile, problem: "write interrupted at \(name.rawValue)", remedy: "Test crash point.")
      }
    }
    func fail(_ what: String) -> StateStoreError {
      StateStoreError(
        file: stateFile, problem: "\(what) failed (\(errnoText()))",
        remedy: "The previous state is intact. Check free space and permissions of \(directory), then retry.")
    }

    unlink(tempFile)
    let fd = StandardStream.createExclusive(tempFile, mode: 0o600)
    guard fd >= 0 else { throw fail("creating \(tempFile)") }
    var ok = StandardStream.write(data, to: fd)
    if !ok {
      let error = fail("writing \(tempFile)")
      close(fd)
      unlink(tempFile)
      throw error
    }
    try step(.tempWritten)
    ok = fsync(fd) == 0
    let syncError = ok ? nil : fail("fsync of \(tempFile)")
    close(fd)
    if let syncError {
      unlink(tempFile)
      throw syncError
    }
    try step(.tempSynced)
    if access(stateFile, F_OK) == 0 {
      unlink(previousTempFile)
      guard link(stateFile, previousTempFile) == 0, rename(previousTempFile, previousFile) == 0 else {
        let error = fail("keeping the previous copy")
        unlink(tempFile)
        throw error
      }
    }
    try step(.previousKept)
    guard rename(tempFile, stateFile) == 0 else {
      let error = fail("renaming \(tempFile)")
      unlink(tempFile)
      throw error
    }
    try step(.renamed)
    let dirFD = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
    guard dirFD >= 0, fsync(dirFD) == 0 else {
      if dirFD >= 0 { close(dirFD) }
      throw fail("fsync of the directory")
    }
    close(dirFD)
    try step(.directorySynced)
  }
}
