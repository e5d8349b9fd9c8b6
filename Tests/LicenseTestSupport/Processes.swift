import Foundation

/// The result of running a program to completion.
public struct ProcessResult: Sendable {
  public var status: Int32
  public var stdout: String
  public var stderr: String
}

/// The directory holding the built products (`license-keytool`, ...): the folder of the test
/// bundle, or `$LICENSE_AGENT_BIN_DIR` when set (to test installed binaries).
public func productsDirectory() -> String {
  if let dir = ProcessInfo.processInfo.environment["LICENSE_AGENT_BIN_DIR"] { return dir }
  var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
  while url.path != "/" {
    url.deleteLastPathComponent()
    if FileManager.default.isExecutableFile(atPath: url.path + "/license-keytool") { return url.path }
  }
  fatalError("cannot find the built products next to \(CommandLine.arguments[0]); set LICENSE_AGENT_BIN_DIR")
}

/// Runs `executable` with `arguments`, feeding `input` on standard input, and waits.
public func runProcess(
  _ executable: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil
) throws -> ProcessResult {
  let process = Process()
  process.executableURL = URL(fileURLWithPath: executable)
  process.arguments = arguments
  if let environment { process.environment = environment }
  let out = Pipe()
  let err = Pipe()
  let inPipe = Pipe()
  process.standardOutput = out
  process.standardError = err
  process.standardInput = inPipe
  try process.run()
  if let input { inPipe.fileHandleForWriting.write(Data(input.utf8)) }
  try inPipe.fileHandleForWriting.close()
  // Read both pipes fully before waiting, so a chatty child never blocks on a full pipe.
  let group = DispatchGroup()
  nonisolated(unsafe) var errData = Data()
  group.enter()
  DispatchQueue.global().async {
    errData = err.fileHandleForReading.readDataToEndOfFile()
    group.leave()
  }
  let outData = out.fileHandleForReading.readDataToEndOfFile()
  group.wait()
  process.waitUntilExit()
  return ProcessResult(
    status: process.terminationStatus, stdout: String(decoding: outData, as: UTF8.self),
    stderr: String(decoding: errData, as: UTF8.self))
}

/// The Python 3 interpreter of `PATH` (the one `.ci/run` installs the test packages into).
public func python3() -> String {
  let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
  for dir in path.split(separator: ":") where FileManager.default.isExecutableFile(atPath: "\(dir)/python3") {
    return "\(dir)/python3"
  }
  return "/usr/bin/python3"
}

/// ``runProcess`` on a thread of its own, awaited: for programs that run for minutes (a
/// virtual machine, a container's commands). A synchronous test that waits holds one of
/// the few threads Swift Testing runs tests on (as many as the machine has cores), and every
/// other test waits behind it; an async test awaiting this holds none.
public func runProcessInBackground(
  _ executable: String, _ arguments: [String], input: String? = nil, environment: [String: String]? = nil
) async throws -> ProcessResult {
  try await onOwnThread { try runProcess(executable, arguments, input: input, environment: environment) }
}

/// Runs `body` on a new thread and awaits its result, so that blocking work (waiting for a
/// process, polling a machine) never holds a thread of Swift's cooperative pool.
public func onOwnThread<T: Sendable>(_ body: @escaping @Sendable () throws -> T) async throws -> T {
  try await withCheckedThrowingContinuation { continuation in
    let thread = Thread { continuation.resume(with: Result { try body() }) }
    thread.stackSize = 1 << 20
    thread.start()
  }
}
