"""HTTP/1.1 request parsing for the embedded web server (http_front.py): the request line and headers,
chunked bodies, and the front's own error answers in the gateway's envelope.

Strict on purpose: anything ambiguous (Content-Length with Transfer-Encoding, two different lengths,
obsolete line folding, a transfer coding other than chunked) is a 400, never a guess that a proxy in
front could make differently (request smuggling).
"""
from __future__ import annotations

import dataclasses
import json
import re
from http import HTTPStatus

MAX_HEADER_BYTES = 64 * 1024     # request line + headers
MAX_HEADERS = 100
TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.([01])")
HEADER_NAME = re.compile(TOKEN)
DECIMAL = re.compile(r"[0-9]{1,15}")   # ASCII digits only: str.isdigit() also takes "²"
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")


class BadRequest(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


@dataclasses.dataclass
class Head:
    """A request's line and headers."""
    method: str
    target: str
    version: str                     # "HTTP/1.0" or "HTTP/1.1"
    headers: list[tuple[str, str]]
    length: int                      # Content-Length (0 when absent or chunked)
    chunked: bool
    keep_alive: bool
    expect_continue: bool


def parse_head(raw: bytes) -> Head:
    """The request line and headers (without the blank line); BadRequest for anything malformed,
    including the request-smuggling shapes (Content-Length with chunked, conflicting lengths)."""
    lines = raw.split(b"\r\n")
    match = REQUEST_LINE.fullmatch(lines[0])
    if not match:
        raise BadRequest(400, "malformed request line")
    if len(lines) - 1 > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header lines")
    headers, values = [], {}
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not HEADER_NAME.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        pair = (name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
        headers.append(pair)
        values.setdefault(pair[0].lower(), []).append(pair[1])
    encoding, lengths = values.get("transfer-encoding", []), values.get("content-length", [])
    chunked = [e.strip().lower() for e in ",".join(encoding).split(",")] == ["chunked"] if encoding else False
    if (encoding and not chunked) or (chunked and lengths) or len(set(lengths)) > 1 \
            or (lengths and not DECIMAL.fullmatch(lengths[0])):
        raise BadRequest(400, "invalid Content-Length or Transfer-Encoding")
    version = "HTTP/1." + match.group(3).decode()
    tokens = {t.strip().lower() for t in ",".join(values.get("connection", [])).split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    expect = version == "HTTP/1.1" and [e.lower() for e in values.get("expect", [])] == ["100-continue"]
    return Head(match.group(1).decode(), match.group(2).decode("latin-1"), version, headers,
                int(lengths[0]) if lengths else 0, chunked, keep_alive, expect)


class Chunked:
    """An incremental decoder of a chunked request body: `feed` returns (body bytes, bytes past its end)."""

    def __init__(self):
        self.pending, self.state, self.remaining, self.trailer_bytes, self.done = bytearray(), "size", 0, 0, False

    def feed(self, data: bytes) -> tuple[bytes, bytes]:
        self.pending += data
        out = bytearray()
        while not self.done:
            if self.state == "data":
                take = self.pending[:self.remaining]
                out += take
                del self.pending[:len(take)]
                self.remaining -= len(take)
                if self.remaining:
                    break
                self.state = "crlf"
                continue
            end = self.pending.find(b"\r\n")
            if end < 0:
                if len(self.pending) > 4096:
                    raise BadRequest(400, "malformed chunked body")
                break
            line = bytes(self.pending[:end])
            del self.pending[:end + 2]
            self._line(line)
        rest = bytes(self.pending) if self.done else b""
        return bytes(out), rest

    def _line(self, line: bytes) -> None:
        if self.state == "crlf":
            if line:
                raise BadRequest(400, "malformed chunked body")
            self.state = "size"
        elif self.state == "size":
            size = line.split(b";", 1)[0].strip()
            if not CHUNK_SIZE.fullmatch(size):
                raise BadRequest(400, "malformed chunk size")
            self.remaining = int(size, 16)
            self.state = "data" if self.remaining else "trailer"
        else:                                           # trailer fields, up to the blank line
            self.trailer_bytes += len(line) + 2
            if self.trailer_bytes > MAX_HEADER_BYTES:
                raise BadRequest(431, "trailer fields too large")
            self.done = not line


def error_answer(status: int, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    """The front's own answers (400, 408, 431 ...) in the gateway's error envelope."""
    code = "PAYLOAD_TOO_LARGE" if status == 413 else "HTTP_ERROR"
    body = json.dumps({"success": False, "id": None, "error": {"code": code, "message": message}}).encode()
    return f"{status} {HTTPStatus(status).phrase}", [("Content-Type", "application/json")], body
