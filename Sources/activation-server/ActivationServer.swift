import FlyingFox
import FlyingSocks
import Foundation
import LicenseCore
import SystemClock

/// `activation-server`: a reference activation server (contract §2) for integration labs,
/// demos and tests. It exchanges activation codes for keys signed with an issuer's private
/// JWK, from a catalog of codes, and can be told to misbehave (fault injection).
///
/// Plain HTTP on a loopback address, as the agent allows for labs; put a TLS front in
/// front of it to test HTTPS.
@main
struct ActivationServerMain {
  static let usage = """
    Usage: activation-server --signer ISSUER.private.jwk --catalog CODES.json [--listen 127.0.0.1:PORT]

    Serves POST /v1/activations (contract §2) on a loopback address (port 0: any free port;
    the first line printed is "listening on http://HOST:PORT").

    The catalog maps each code to its state and the claims of the keys it gives:
      {"codes": {"ABCDE-12345-FGHIJ-67890": {"state": "valid", "serial": "KS-100",
        "edition": "enterprise", "scheme": "vm-count", "osType": "server",
        "licenseType": "commercial", "units": 25, "validity": "365d"}}}
    state is valid, blocked (403 code_blocked), exhausted (409 code_exhausted) or expired
    (410 code_expired); an unknown code is 404 invalid_code. Each key gets the serial
    SERIAL-N (N counting from 1), nbf now and exp now + validity.

    Renewal ahead of expiry (rule C6): a request with "ahead": true and currentExpiresAt
    gets the key of the next period, nbf = currentExpiresAt and exp = currentExpiresAt +
    validity. An entry's optional "renewableBefore" (e.g. "5d") says from when that period
    is open: before currentExpiresAt - renewableBefore the reply is 409 not_yet_available
    with Retry-After (the seconds until it opens). Without it, it is open at once.

    Fault injection (for tests and labs), POST /admin/faults with a JSON object, any of:
      {"failNext": N, "status": 503, "retryAfter": 2, "error": "code_blocked"}
                                                        the next N requests fail so
      {"delayMs": 2000}                                 every reply is delayed
      {"malformed": true}                               200 with a body that is not JSON
      {"wrongContentType": true}                        200 with text/html
      {"badSignature": true}                            keys signed by another issuer
      {"drop": true}                                    headers, then the connection drops
      {"reset": true}                                   back to normal
    GET /admin/requests lists the requests received (time, code hint, currentSerial).
    """

  static func main() async throws {
    var signer: String?
    var catalog: String?
    var listen = "127.0.0.1:0"
    var arguments = CommandLine.arguments.dropFirst()
    while let argument = arguments.popFirst() {
      switch argument {
      case "--signer": signer = arguments.popFirst()
      case "--catalog": catalog = arguments.popFirst()
      case "--listen": listen = arguments.popFirst() ?? listen
      case "--help", "-h":
        print(usage)
        return
      default:
        fail("unknown argument '\(argument)'\n\n\(usage)", code: 64)
      }
    }
    guard let signer, let catalog else { fail("--signer and --catalog are required\n\n\(usage)", code: 64) }
    guard let signerData = FileManager.default.contents(atPath: signer), let jwk = try? JWK(json: signerData),
      jwk.seed != nil
    else { fail("\(signer) is not a private Ed25519 JWK (make one with license-keytool keygen)", code: 66) }
    guard let catalogData = FileManager.default.contents(atPath: catalog),
      let codes = try? JSONDecoder().decode(Catalog.self, from: catalogData)
    else { fail("\(catalog) is not a catalog of codes (see --help)", code: 66) }
    let parts = listen.split(separator: ":")
    guard parts.count == 2, let port = UInt16(parts[1]),
      ["127.0.0.1", "localhost"].contains(String(parts[0]))
    else {
      fail("--listen must be 127.0.0.1:PORT (a loopback address)", code: 64)
    }
    let state = ServerState(issuer: jwk, catalog: codes)
    let server = HTTPServer(address: try .inet(ip4: "127.0.0.1", port: port))
    await server.appendRoute("POST /v1/activations") { request in await state.activate(request) }
    await server.appendRoute("POST /admin/faults") { request in await state.setFaults(request) }
    await server.appendRoute("GET /admin/requests") { _ in await state.requestLog() }
    let task = Task { try await server.run() }
    try await server.waitUntilListening()
    if case .ip4(let host, let boundPort)? = await server.listeningAddress {
      FileHandle.standardOutput.write(Data("listening on http://\(host):\(boundPort)\n".utf8))
    }
    FileHandle.standardOutput.synchronizeFile()
    try await task.value
  }

  static func fail(_ message: String, code: Int32) -> Never {
    FileHandle.standardError.write(Data("activation-server: \(message)\n".utf8))
    exit(code)
  }
}

struct Catalog: Decodable {
  struct Entry: Decodable {
    var state: String
    var serial: String
    var edition: String
    var scheme: String
    var osType: String?
    var licenseType: String
    var units: Int
    var validity: String
    var product: String?
    var renewableBefore: String?
  }
  var codes: [String: Entry]
}

struct Faults: Decodable {
  var failNext: Int?
  var status: Int?
  var error: String?
  var retryAfter: Int?
  var delayMs: Int?
  var malformed: Bool?
  var wrongContentType: Bool?
  var badSignature: Bool?
  var drop: Bool?
  var reset: Bool?
}

actor ServerState {
  let issuer: JWK
  let impostor = JWK.generate(kid: "impostor")
  let catalog: Catalog
  var failNext = 0
  var failStatus = 503
  var failError = "injected_fault"
  var retryAfter: Int?
  var delayMs = 0
  var malformed = false
  var wrongContentType = false
  var badSignature = false
  var drop = false
  var issued: [String: Int] = [:]
  var log: [[String: String]] = []

  init(issuer: JWK, catalog: Catalog) {
    self.issuer = issuer
    self.catalog = catalog
  }

  func json(_ status: Int, _ object: [String: Any], headers: [HTTPHeader: String] = [:]) -> HTTPResponse {
    var all = headers
    all[.contentType] = "application/json"
    let body = (try? JSONSerialization.data(withJSONObject: object, options: [.sortedKeys])) ?? Data()
    return HTTPResponse(
      statusCode: HTTPStatusCode(status, phrase: "Status \(status)"), headers: HTTPHeaders(all), body: body)
  }

  func activate(_ request: HTTPRequest) async -> HTTPResponse {
    let body = (try? await request.bodyData) ?? Data()
    let object = (try? JSONSerialization.jsonObject(with: body)) as? [String: Any]
    let codeText = object?["activationCode"] as? String ?? ""
    var entry: [String: String] = [
      "at": Timestamp.now.rfc3339, "codeHint": String(codeText.suffix(5)),
      "currentSerial": object?["currentSerial"] as? String ?? "",
      "ahead": (object?["ahead"] as? Bool).map { $0 ? "true" : "false" } ?? "",
      "currentExpiresAt": object?["currentExpiresAt"] as? String ?? "",
    ]
    entry["machineId"] = object?["machineId"] as? String ?? ""
    log.append(entry)
    if delayMs > 0 { try? await Task.sleep(nanoseconds: UInt64(delayMs) * 1_000_000) }
    if failNext > 0 {
      failNext -= 1
      var headers: [HTTPHeader: String] = [:]
      if let retryAfter { headers[HTTPHeader("Retry-After")] = String(retryAfter) }
      return json(failStatus, ["error": failError, "message": "fault injected for a test"], headers: headers)
    }
    guard let code = ActivationCode(codeText) else {
      return json(400, ["error": "invalid_code", "message": "not an activation code"])
    }
    guard let item = catalog.codes[code.value] else {
      return json(404, ["error": "invalid_code", "message": "unknown activation code"])
    }
    switch item.state {
    case "blocked": return json(403, ["error": "code_blocked", "message": "this activation code is blocked"])
    case "exhausted":
      return json(
        409, ["error": "code_exhausted", "message": "this activation code has no activations left"])
    case "expired":
      return json(410, ["error": "code_expired", "message": "this activation code has expired"])
    default: break
    }
    if drop {
      // A Content-Length of 64 bytes, then the connection closes: a dropped connection.
      return HTTPResponse(
        statusCode: .ok, headers: HTTPHeaders([.contentType: "application/json"]),
        body: HTTPBodySequence(from: DroppedBytes(), count: 64))
    }
    if malformed {
      return HTTPResponse(
        statusCode: .ok, headers: HTTPHeaders([.contentType: "application/json"]),
        body: Data("{\"key\": ".utf8))
    }
    if wrongContentType {
      return HTTPResponse(
        statusCode: .ok, headers: HTTPHeaders([.contentType: "text/html"]),
        body: Data("<html>login</html>".utf8))
    }
    let now = Timestamp.now
    guard let validity = TimeSpan(item.validity), let edition = Edition(rawValue: item.edition),
      let scheme = Scheme(rawValue: item.scheme), let licenseType = LicenseType(rawValue: item.licenseType)
    else { return json(500, ["error": "bad_catalog", "message": "the catalog entry is invalid"]) }
    // C6: a request ahead gets the next period, once it is open.
    var period = (notBefore: now - .seconds(60), expiresAt: now + validity)
    if object?["ahead"] as? Bool == true {
      guard let text = object?["currentExpiresAt"] as? String, let current = Timestamp(rfc3339: text) else {
        return json(400, ["error": "bad_request", "message": "a request ahead needs currentExpiresAt"])
      }
      if let opensBefore = item.renewableBefore.flatMap(TimeSpan.init) {
        let opens = current - opensBefore
        if now < opens {
          let seconds = (opens.microseconds(since: now) + 999_999) / 1_000_000
          return json(
            409,
            [
              "error": "not_yet_available",
              "message": "the next period of this code opens at \(opens.rfc3339)",
            ], headers: [HTTPHeader("Retry-After"): String(seconds)])
        }
      }
      period = (current, current + validity)
    }
    let count = (issued[code.value] ?? 0) + 1
    issued[code.value] = count
    let claims = LicenseClaims(
      issuer: issuer.kid, serial: "\(item.serial)-\(count)",
      issuedAt: Timestamp(seconds: now.microseconds / 1_000_000),
      notBefore: period.notBefore, expiresAt: period.expiresAt,
      product: item.product ?? EngineConfiguration.defaultProduct,
      edition: edition, scheme: scheme, osType: item.osType.flatMap(OSType.init(rawValue:)),
      licenseType: licenseType,
      units: item.units)
    guard
      let key = try? KeyParser.sign(
        claims,
        with: badSignature ? JWK(kid: issuer.kid, publicKey: impostor.publicKey, seed: impostor.seed) : issuer
      )
    else { return json(500, ["error": "signing_failed", "message": "cannot sign"]) }
    return json(200, ["key": key])
  }

  func setFaults(_ request: HTTPRequest) async -> HTTPResponse {
    guard let data = try? await request.bodyData,
      let faults = try? JSONDecoder().decode(Faults.self, from: data)
    else {
      return json(400, ["error": "bad_request", "message": "expected a JSON object of faults (see --help)"])
    }
    if faults.reset == true {
      (failNext, failStatus, retryAfter, delayMs, malformed, wrongContentType, badSignature) = (
        0, 503, nil, 0, false, false, false
      )
      failError = "injected_fault"
      drop = false
    }
    if let value = faults.failNext { failNext = value }
    if let value = faults.status { failStatus = value }
    if let value = faults.error { failError = value }
    if let value = faults.retryAfter { retryAfter = value }
    if let value = faults.delayMs { delayMs = value }
    if let value = faults.malformed { malformed = value }
    if let value = faults.wrongContentType { wrongContentType = value }
    if let value = faults.badSignature { badSignature = value }
    if let value = faults.drop { drop = value }
    return json(200, ["ok": true])
  }

  func requestLog() -> HTTPResponse {
    json(200, ["requests": log])
  }
}

extension Timestamp {
  static var now: Timestamp { SystemWallClock().now() }
}

/// A body that fails before its first byte: the server closes the connection mid-reply.
struct DroppedBytes: AsyncBufferedSequence {
  typealias Element = UInt8
  struct Dropped: Error {}
  struct AsyncIterator: AsyncBufferedIteratorProtocol {
    mutating func next() async throws -> UInt8? { throw Dropped() }
    mutating func nextBuffer(suggested count: Int) async throws -> [UInt8]? { throw Dropped() }
  }
  func makeAsyncIterator() -> AsyncIterator { AsyncIterator() }
}
