"""Data for the streaming tests: tiny pairs whose source image each window can be traced to, written as parquet
shards, WebDataset tars or jsonl tables of paths; and a loopback HTTP server that serves them with Range requests
as object stores do (Python's http.server ignores Range), with faults chosen per file (a 404, a body cut short, a
connection reset, a 503 for the first N requests). It counts what it served, so a test can tell what was read."""

from __future__ import annotations

import collections
import http.server
import io
import json
import re
import socket
import tarfile
import threading
from pathlib import Path

import cv2
import numpy as np

LR = 16  # LR edge of the test pairs; HR is 4x


def png(rgb: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))[1].tobytes()


def make_pairs(count: int, first: int = 0, seed: int = 0) -> list[dict]:
    """Rows {id, lr, hr} (PNG bytes): LR random but for channel 0, which holds the image's number everywhere
    (first, first+1, ...: under 256), so any window names its image; HR is LR repeated 4x (nearest), so an
    aligned window pair satisfies hr == up(lr)."""
    rng = np.random.default_rng([seed, first])
    rows = []
    for n in range(first, first + count):
        lr = rng.integers(0, 256, (LR, LR, 3), dtype=np.uint8)
        lr[..., 0] = n
        rows.append({"id": f"img{n:04d}.png", "lr": png(lr), "hr": png(up(lr))})
    return rows


def up(a: np.ndarray) -> np.ndarray:
    return np.repeat(np.repeat(a, 4, -3), 4, -2)


def write_parquet(path: Path, rows: list[dict], group_rows: int = 4) -> Path:
    """A parquet shard as the hub holds them: image columns (datasets' Image: bytes + path), row groups of
    `group_rows` rows."""
    import datasets

    features = datasets.Features(id=datasets.Value("string"), lr=datasets.Image(), hr=datasets.Image())
    cells = {
        "id": [r["id"] for r in rows],
        **{c: [{"bytes": r[c], "path": None} for r in rows] for c in ("lr", "hr")},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_dict(cells, features=features).to_parquet(str(path), batch_size=group_rows)
    return path


def write_tar(path: Path, rows: list[dict]) -> Path:
    """A WebDataset shard: per sample <key>.lr.png and <key>.hr.png."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for row in rows:
            key = row["id"].removesuffix(".png")
            for column in ("lr", "hr"):
                info = tarfile.TarInfo(f"{key}.{column}.png")
                info.size = len(row[column])
                tar.addfile(info, io.BytesIO(row[column]))
    return path


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """A table of paths relative to itself, beside the image files it names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for row in rows:
        for column in ("lr", "hr"):
            (path.parent / column / row["id"]).parent.mkdir(parents=True, exist_ok=True)
            (path.parent / column / row["id"]).write_bytes(row[column])
        lines.append(json.dumps({"id": row["id"], "lr": f"lr/{row['id']}", "hr": f"hr/{row['id']}"}))
    path.write_text("\n".join(lines) + "\n")
    return path


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
        self.ranges: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)  # bytes [start, end) sent
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
                    server.ranges[name].append((start, start + len(chunk)))
                self.wfile.write(chunk)
                return None

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)

    def __enter__(self) -> ShardServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=10)
