"""A loopback HTTP server for data files, as object stores serve them: Range requests (Python's http.server ignores
Range), faults chosen per file (a 404, a body cut short, a connection reset, a 503 for the first N requests), and a
count of what it served, per file and in time, so a caller can tell what was read and when. The streaming tests
(tests/stream_data.py) and the streaming training benchmark (stream_training.py) serve their shards with it."""

from __future__ import annotations

import collections
import http.server
import re
import socket
import threading
import time
from pathlib import Path

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


class ShardServer:
    """`with ShardServer(folder) as server:` serves `folder` at `server.url` (http://127.0.0.1:PORT); files may be
    symbolic links (one file served under several names)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        # file name -> "404", "truncate" (half the asked bytes, then close), "reset" (RST before any byte)
        # or ("fail", n): a 503 for the first n requests, then normal
        self.faults: dict[str, object] = {}
        self.requests: collections.Counter[str] = collections.Counter()
        self.bytes_sent: collections.Counter[str] = collections.Counter()
        self.ranges: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # bytes [start, end) sent
        self.sent: list[tuple[float, str, int]] = []  # (time.time() once sent, file name, bytes) of each body
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
                size = path.stat().st_size
                start, end, status = 0, size, 200
                match = _RANGE.match(self.headers.get("Range", ""))
                if match:
                    first, last = match.groups()
                    if first:
                        start, end = int(first), min(size, int(last) + 1 if last else size)
                    else:
                        start = max(0, size - int(last))
                    status = 206
                self.send_response(status)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
                self.end_headers()
                if not body:
                    return None
                with path.open("rb") as f:  # the asked range only: shards of the benchmark are 100s of MB
                    f.seek(start)
                    chunk = f.read(end - start)
                if fault == "truncate":
                    chunk = chunk[: len(chunk) // 2]
                    self.close_connection = True
                self.wfile.write(chunk)
                with server.lock:
                    server.bytes_sent[name] += len(chunk)
                    server.ranges[name].append((start, start + len(chunk)))
                    server.sent.append((time.time(), name, len(chunk)))
                return None

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def bytes_between(self, start: float, end: float) -> int:
        """Body bytes sent from `start` to `end` (time.time())."""
        with self.lock:
            return sum(n for t, _, n in self.sent if start <= t <= end)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
