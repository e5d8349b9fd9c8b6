#!/usr/bin/env python3
"""An HTTP(S) server for testing license-agent-activate-https, on 127.0.0.1.

  http_fixture.py PORTFILE [CERT KEY]

The first path segment picks the reply to POST /<mode>/v1/activations:
  ok           200 {"key": "FIXTURE-KEY"}
  blocked      403 {"error": "code_blocked", "message": "..."}
  busy         503 with Retry-After: 7
  busydate     429 with Retry-After as an HTTP date 30 s ahead
  notyet       409 {"error": "not_yet_available"} with Retry-After: 3600 (C6)
  exhausted    409 {"error": "code_exhausted"}
  html         200 text/html
  huge         200 JSON of 2 MiB
  redirect     302 to /ok/v1/activations
  slow         200 {"key": "SLOW-KEY"} after 4 s
  truncated    200 announcing 200 bytes, then 20 and the connection closed
A request in absolute form (through a proxy) gets 200 {"key": "VIA-PROXY"}.
Every request line is appended to PORTFILE.log. The chosen port is written to PORTFILE.
"""
import email.utils
import http.server
import json
import ssl
import sys
import time

portfile = sys.argv[1]


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type="application/json", headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        with open(portfile + ".log", "a") as log:
            log.write(f"{self.requestline} {body.decode()}\n")
        if self.path.startswith("http://"):
            return self.reply(200, {"key": "VIA-PROXY"})
        mode = self.path.strip("/").split("/")[0]
        if mode == "ok":
            self.reply(200, {"key": "FIXTURE-KEY"})
        elif mode == "blocked":
            self.reply(403, {"error": "code_blocked", "message": "blocked by the vendor"})
        elif mode == "busy":
            self.reply(503, {"error": "busy"}, headers=[("Retry-After", "7")])
        elif mode == "notyet":
            self.reply(409, {"error": "not_yet_available", "message": "opens later"}, headers=[("Retry-After", "3600")])
        elif mode == "exhausted":
            self.reply(409, {"error": "code_exhausted", "message": "no activations left"})
        elif mode == "busydate":
            self.reply(429, {"error": "slow down"}, headers=[("Retry-After", email.utils.formatdate(time.time() + 30, usegmt=True))])
        elif mode == "html":
            self.reply(200, b"<html>login</html>", content_type="text/html")
        elif mode == "huge":
            self.reply(200, {"key": "x" * (2 << 20)})
        elif mode == "slow":
            time.sleep(4)
            self.reply(200, {"key": "SLOW-KEY"})
        elif mode == "truncated":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", "200")
            self.end_headers()
            self.wfile.write(b'{"key": "TRUNCATED-K')
            self.wfile.flush()
            self.close_connection = True
        elif mode == "redirect":
            self.reply(302, b"", headers=[("Location", "/ok/v1/activations")])
        else:
            self.reply(404, {"error": "invalid_code", "message": "unknown"})


server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
if len(sys.argv) > 3:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(sys.argv[2], sys.argv[3])
    server.socket = context.wrap_socket(server.socket, server_side=True)
with open(portfile, "w") as f:
    f.write(str(server.server_address[1]))
server.serve_forever()
