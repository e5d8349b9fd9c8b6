import FuzzSupport
import Varlink

/// libFuzzer target for Varlink framing and decoding (`Fuzz/README.md`): the bytes arrive
/// as a client would send them, in chunks whose sizes come from the input's first byte;
/// each framed message is decoded as a call and as a reply. Properties besides not
/// crashing: the framer never returns a message longer than its limit, and a call that
/// decodes serializes to a message that decodes to the same call.
func exercise(_ bytes: [UInt8]) {
  guard let first = bytes.first else { return }
  let chunk = Int(first % 64) + 1
  var framer = MessageFramer(maximumMessageSize: 4096)
  var offset = 1
  while offset < bytes.count {
    let end = min(offset + chunk, bytes.count)
    framer.append(bytes[offset..<end])
    offset = end
    while true {
      guard let message = try? framer.next() else { break }
      precondition(message.count <= 4096, "a message over the limit was framed")
      if let call = try? VarlinkCall.parse(message) {
        let again = try? VarlinkCall.parse(Array(call.serialized.utf8))
        precondition(again?.method == call.method, "a parsed call does not survive serialization")
      }
      _ = try? VarlinkReply.parse(message)
    }
  }
}

@main struct FuzzTarget {
  static func main() { fuzzMain(exercise) }
}
