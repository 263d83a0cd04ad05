"""A loopback HTTP server for the streaming tests: files from one folder, Range requests served as object stores
serve them (Python's http.server ignores Range), and faults chosen per file: a 404, a body cut short, a connection
reset, or a 503 for the first N requests. It counts what it served, so a test can tell what was read."""

from __future__ import annotations

import collections
import http.server
import re
import socket
import threading
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class ShardServer:
    """`with ShardServer(folder) as server:` serves `folder` at `server.url` (http://127.0.0.1:PORT)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # file name -> "404", "truncate" (half the asked bytes, then close), "reset" (RST before any byte)
        # or ("fail", n): a 503 for the first n requests, then normal
        self.faults: dict[str, object] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet: pytest shows stderr of failing tests only
                pass

            def do_HEAD(self) -> None:
                self._serve(body=False)

            def do_GET(self) -> None:
                self._serve(body=True)

            def _serve(self, body: bool) -> None:
                name = self.path.lstrip("/").split("?")[0]
                with server.lock:
                    server.requests[name] += 1
                    fault = server.faults.get(name)
                    if isinstance(fault, tuple) and fault[0] == "fail" and fault[1] > 0:
                        server.faults[name] = ("fail", fault[1] - 1)
                        fault = "503"
                path = server.root / name
                if fault == "404" or not path.is_file():
                    return self._status(404)
                if fault == "503":
                    return self._status(503)
                if fault == "reset" and body:
                    # SO_LINGER 0: close() sends a TCP RST, as a dropped connection does
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                    self.close_connection = True
                    self.connection.close()
                    return None
                data = path.read_bytes()
                start, end, status = 0, len(data), 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    first, last = match.groups()
                    if first:
                        start, end = int(first), min(len(data), int(last) + 1 if last else len(data))
                    else:
                        start = max(0, len(data) - int(last))
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{len(data)}")
                self.end_headers()
                if not body:
                    return None
                chunk = data[start:end]
                if fault == "truncate":
                    chunk = chunk[: len(chunk) // 2]
                    self.close_connection = True
                with server.lock:
                    server.bytes_sent[name] += len(chunk)
                self.wfile.write(chunk)
                return None

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
