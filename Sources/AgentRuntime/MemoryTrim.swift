import FoundationEssentials
import Glibc
import StandardIO

/// Releases the executable's code pages that start-up touched, so that an idle agent holds
/// only what it uses.
///
/// A statically linked Swift daemon maps a large text segment (the standard library,
/// Foundation, the concurrency runtime); the kernel's fault-around maps 64 KiB around every
/// page that start-up executed, which leaves about 11 MiB of code resident that the idle
/// agent never touches again. Those pages are clean and file-backed: `MADV_DONTNEED` unmaps
/// them from this process (they stay in the page cache), and a later use is a minor fault.
/// Only executable (`r-xp`) mappings of our own binary are trimmed: they are never written,
/// whereas read-only data may hold relocations, which must not be discarded.
public enum MemoryTrim {
  /// Trims the executable mappings of `/proc/self/exe`; returns the bytes advised.
  @discardableResult
  public static func releaseExecutablePages() -> Int {
    guard let executable = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"),
      let maps = StandardStream.readFile("/proc/self/maps").map({ String(decoding: $0, as: UTF8.self) })
    else { return 0 }
    var advised = 0
    for line in maps.split(separator: "\n") {
      let fields = line.split(separator: " ", omittingEmptySubsequences: true)
      guard fields.count >= 6, fields[1] == "r-xp", fields[5...].joined(separator: " ") == executable else {
        continue
      }
      let bounds = fields[0].split(separator: "-").compactMap { UInt(String($0), radix: 16) }
      guard bounds.count == 2, let start = UnsafeMutableRawPointer(bitPattern: bounds[0]) else { continue }
      let length = Int(bounds[1] - bounds[0])
      if madvise(start, length, MADV_DONTNEED) == 0 { advised += length }
    }
    return advised
  }
}
