import Foundation
import Glibc

/// Lines from a pipe, with a timeout.
final class LineReader {
  private let handle: FileHandle
  private var buffer = Data()

  init(_ handle: FileHandle) { self.handle = handle }

  /// The next line, waiting at most `timeout` seconds for it (nil: none came).
  func next(timeout: Double = 5) -> String? {
    let deadline = Date().addingTimeInterval(timeout)
    while true {
      if let end = buffer.firstIndex(of: UInt8(ascii: "\n")) {
        let line = String(decoding: buffer[..<end], as: UTF8.self)
        buffer.removeSubrange(...end)
        return line
      }
      let remaining = deadline.timeIntervalSinceNow
      if remaining <= 0 { return nil }
      var descriptor = pollfd(fd: handle.fileDescriptor, events: Int16(POLLIN), revents: 0)
      guard poll(&descriptor, 1, Int32(remaining * 1000) + 1) > 0 else { return nil }
      let chunk = handle.availableData
      if chunk.isEmpty { return nil }
      buffer += chunk
    }
  }
}
