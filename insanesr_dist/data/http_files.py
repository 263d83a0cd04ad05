"""Reading http(s):// data files with Range requests: a small read-only fsspec filesystem on the standard library.

`datasets` opens remote data files through fsspec, whose own HTTP filesystem needs aiohttp (not a dependency of
the toolkit) and, where it loads, has datasets retry a dropped connection for up to 20 x 5 s per read. This one
is registered for http and https by shards.py, in every process that reads shards: a file's size from a
HEAD request (or a one-byte Range GET where HEAD is refused), its bytes by Range GETs, as object stores serve
them; proxies come from the environment (urllib's). It cannot list a folder, so an http URL cannot hold a glob.
A failed request is an error at once: the retries live one level up (shards.shard_rows retries a whole shard,
briefly).
"""

from __future__ import annotations

import http.client
import urllib.error
import urllib.request

import fsspec
from fsspec.spec import AbstractBufferedFile, AbstractFileSystem

TIMEOUT_S = 60  # a request that hangs longer than this is a failed read (retried per shard), never a hang
BLOCK_SIZE = 8 * 2**20  # one request per 8 MB: a parquet column chunk of image bytes is read in a few


class RangeError(OSError):
    """An HTTP request that did not give the bytes asked for."""


def _request(url: str, method: str = "GET", headers: dict | None = None):
    try:
        return urllib.request.urlopen(
            urllib.request.Request(url, method=method, headers=headers or {}), timeout=TIMEOUT_S
        )
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise FileNotFoundError(f"{url}: HTTP 404 (not found)") from None
        raise RangeError(f"{url}: HTTP {e.code} ({e.reason})") from None
    except urllib.error.URLError as e:
        raise RangeError(f"{url}: {e.reason}") from None


class RangeHTTPFileSystem(AbstractFileSystem):
    """Read-only http(s) files: `info` (size) and `open` (buffered Range reads). Options that fsspec's own HTTP
    filesystem takes (client_kwargs, headers, ...) are accepted; `headers` are sent."""

    protocol = ("http", "https")

    def __init__(self, *args, headers: dict | None = None, **options) -> None:
        super().__init__(*args, **options)
        self.headers = dict(headers or {})

    @classmethod
    def _strip_protocol(cls, path: str) -> str:
        return path  # a URL is its own path

    def info(self, path: str, **kwargs) -> dict:
        size = None
        try:
            with _request(path, "HEAD", self.headers) as response:
                size = response.headers.get("Content-Length")
        except RangeError:  # some servers refuse HEAD; a one-byte range says the size too
            pass
        if size is None:
            with _request(path, headers={**self.headers, "Range": "bytes=0-0"}) as response:
                total = response.headers.get("Content-Range", "").rpartition("/")[2]
                size = total if total.isdigit() else response.headers.get("Content-Length")
        if size is None:
            raise RangeError(f"{path}: the server says no size (Content-Length), so it cannot be read by ranges")
        return {"name": path, "size": int(size), "type": "file"}

    def ls(self, path: str, detail: bool = True, **kwargs):
        raise NotImplementedError(f"{path}: an http(s) server lists no folders; name the files (a {{a..b}} range)")

    def _open(self, path: str, mode: str = "rb", block_size=None, autocommit=True, cache_options=None, **kwargs):
        if mode != "rb":
            raise NotImplementedError("http(s) files are read-only")
        size = self.info(path)["size"]
        return RangeHTTPFile(self, path, mode, block_size or BLOCK_SIZE, size=size, cache_options=cache_options)


class RangeHTTPFile(AbstractBufferedFile):
    def __init__(self, fs, path, mode, block_size, size, cache_options=None) -> None:
        super().__init__(fs, path, mode, block_size, cache_type="readahead", cache_options=cache_options, size=size)

    def _fetch_range(self, start: int, end: int) -> bytes:
        if start >= end:
            return b""
        headers = {**self.fs.headers, "Range": f"bytes={start}-{end - 1}"}
        with _request(self.path, headers=headers) as response:
            try:
                data = response.read()
            except http.client.IncompleteRead as e:
                raise RangeError(
                    f"{self.path}: connection closed after {len(e.partial)} of {end - start} bytes"
                ) from None
            partial = response.status == 206
        if not partial:  # a server that ignores Range sends the whole file: keep the part asked for
            data = data[start:end]
        if len(data) != min(end, self.size) - start:
            raise RangeError(f"{self.path}: got {len(data)} bytes of the {end - start} asked for at {start}")
        return data


def register() -> None:
    """Read http(s):// through this module's filesystem in this process (fsspec, and so `datasets`)."""
    for protocol in RangeHTTPFileSystem.protocol:
        fsspec.register_implementation(protocol, RangeHTTPFileSystem, clobber=True)
