"""Stand-in for `python -m linesight.<service>` in supervisor tests: serves /healthz and /readyz.

Usage: python dummy_service.py NAME [CRASH_MARKER]; exits 3 at once when CRASH_MARKER exists.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        ok = self.path in ("/healthz", "/readyz")
        self.send_response(200 if ok else 404)
        self.end_headers()
        self.wfile.write(b"ok" if ok else b"")

    def log_message(self, *args: object) -> None:
        pass


def main() -> None:
    name = sys.argv[1]
    if len(sys.argv) > 2 and Path(sys.argv[2]).exists():
        sys.exit(3)
    port = json.loads(os.environ["LINESIGHT_HTTP_PORTS"])[name]
    server = ThreadingHTTPServer((os.environ.get("LINESIGHT_HOST", "127.0.0.1"), port), Handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


if __name__ == "__main__":
    main()
