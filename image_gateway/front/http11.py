"""HTTP/1.1 request parsing for the embedded web server (http_front.py): the request line and headers,
chunked bodies, and the front's own error answers in the gateway's envelope.

Strict on purpose (RFC 9110/9112): anything ambiguous (Content-Length with Transfer-Encoding, two
different lengths, obsolete line folding, a transfer coding other than chunked, a bare LF or any other
control character but HTAB in a line, a numeric header that is not plain ASCII digits, an HTTP/1.1
request without exactly one Host) is a 400, never a guess that a proxy in front could make differently
(request smuggling: `X-A: a\nTransfer-Encoding: chunked` is one header to a strict parser, two to a
lenient one).
"""
from __future__ import annotations

import dataclasses
import json
import re
import urllib.parse
from http import HTTPStatus

from image_gateway import errors

MAX_HEADER_BYTES = 64 * 1024     # request line + headers
MAX_HEADERS = 100
TOKEN = rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+"
REQUEST_LINE = re.compile(rb"(" + TOKEN + rb") ([^\x00-\x20\x7f]+) HTTP/1\.([01])")
HEADER_NAME = re.compile(TOKEN)
CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")   # CTLs but HTAB: never inside a field line (RFC 9110 5.5)
BARE_LF = re.compile(rb"(?<!\r)\n")
DECIMAL = re.compile(r"[0-9]{1,15}")   # ASCII digits only: str.isdigit() also takes "²"
CHUNK_SIZE = re.compile(rb"[0-9A-Fa-f]{1,15}")
NUMERIC_HEADERS = ("content-length", "inference-header-content-length")   # every header read as a number
CODES = {413: errors.PAYLOAD_TOO_LARGE.code, 401: errors.UNAUTHORIZED.code, 503: errors.SERVER_BUSY.code}


class BadRequest(Exception):
    """A request the front answers itself; `path` is its target's path when the request line was readable."""

    def __init__(self, status: int, message: str, path: str = ""):
        super().__init__(message)
        self.status, self.message, self.path = status, message, path


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
    path: str                        # the target's path, %-decoded: the WSGI PATH_INFO

    def values(self, name: str) -> list[str]:
        """Every value of header `name` (case-insensitive), in order."""
        return [value for key, value in self.headers if key.lower() == name]


def target_path(target: str) -> str:
    """A request target's path, %-decoded as the WSGI PATH_INFO (latin-1); the path of an absolute-form one."""
    path = target.partition("?")[0]
    if "://" in path:
        path = urllib.parse.urlsplit(path).path or "/"
    return urllib.parse.unquote_to_bytes(path).decode("latin-1")


def check_line_endings(buffer: bytes | bytearray, start: int = 0) -> None:
    """A head still arriving: 400 at once for a bare LF at or after `start` (only CRLF ends a line)."""
    if BARE_LF.search(buffer, max(start - 1, 0)):
        raise BadRequest(400, "a line ends in a bare LF; HTTP/1.1 lines end in CRLF")


def parse_head(raw: bytes) -> Head:
    """The request line and headers (without the blank line); BadRequest for anything malformed,
    including the request-smuggling shapes (Content-Length with chunked, conflicting lengths)."""
    lines = raw.split(b"\r\n")
    match = REQUEST_LINE.fullmatch(lines[0])
    if not match:
        raise BadRequest(400, "malformed request line")
    try:
        path = target_path(match.group(2).decode("latin-1"))
    except ValueError:                                  # urlsplit: "http://[::1/" and the like
        raise BadRequest(400, "malformed request target") from None
    try:
        return _parse_fields(match, path, lines[1:])
    except BadRequest as exc:                          # answered in the envelope of the request's route
        exc.path = path
        raise


def _parse_fields(match: re.Match, path: str, lines: list[bytes]) -> Head:
    if len(lines) > MAX_HEADERS:
        raise BadRequest(431, f"more than {MAX_HEADERS} header lines")
    headers, values = [], {}
    for line in lines:
        name, colon, value = line.partition(b":")
        if not colon or not HEADER_NAME.fullmatch(name):
            raise BadRequest(400, "malformed header line")
        if CONTROL.search(value):
            raise BadRequest(400, f"header {name.decode('latin-1')!r} has a control character (CR, LF, NUL ...)")
        pair = (name.decode("latin-1"), value.strip(b" \t").decode("latin-1"))
        headers.append(pair)
        values.setdefault(pair[0].lower(), []).append(pair[1])
    version = "HTTP/1." + match.group(3).decode()
    lengths, chunked = _framing(values, version)
    tokens = {t.strip().lower() for t in ",".join(values.get("connection", [])).split(",")}
    keep_alive = "close" not in tokens if version == "HTTP/1.1" else "keep-alive" in tokens
    expect = version == "HTTP/1.1" and [e.lower() for e in values.get("expect", [])] == ["100-continue"]
    return Head(match.group(1).decode(), match.group(2).decode("latin-1"), version, headers,
                int(lengths[0]) if lengths else 0, chunked, keep_alive, expect, path)


def _framing(values: dict[str, list[str]], version: str) -> tuple[list[str], bool]:
    """(Content-Length values, chunked) after the checks that keep a request's framing unambiguous."""
    for name in NUMERIC_HEADERS:
        if not all(DECIMAL.fullmatch(value) for value in values.get(name, [])):
            raise BadRequest(400, f"{name} must be ASCII digits")
    hosts = values.get("host", [])
    if len(hosts) > 1 or (version == "HTTP/1.1" and not hosts):
        raise BadRequest(400, "an HTTP/1.1 request needs exactly one Host header")
    encoding, lengths = values.get("transfer-encoding", []), values.get("content-length", [])
    chunked = [e.strip().lower() for e in ",".join(encoding).split(",")] == ["chunked"] if encoding else False
    if (encoding and (not chunked or version == "HTTP/1.0")) or (chunked and lengths) or len(set(lengths)) > 1:
        raise BadRequest(400, "invalid Content-Length or Transfer-Encoding")
    return lengths, chunked


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
                if len(self.pending) > 4096 or b"\n" in self.pending:
                    raise BadRequest(400, "malformed chunked body")
                break
            line = bytes(self.pending[:end])
            del self.pending[:end + 2]
            self._line(line)
        rest = bytes(self.pending) if self.done else b""
        return bytes(out), rest

    def _line(self, line: bytes) -> None:
        if CONTROL.search(line):                        # a bare CR or LF in a size, extension or trailer line
            raise BadRequest(400, "malformed chunked body")
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


def error_answer(status: int, message: str, headers: tuple[tuple[str, str], ...] = (),
                 path: str = "") -> tuple[str, list[tuple[str, str]], bytes]:
    """The front's own answers (400, 401, 408, 431, 503 ...) in the gateway's error envelope, whose code is
    the web tier's where it has one for the status (PAYLOAD_TOO_LARGE, UNAUTHORIZED, SERVER_BUSY); for a
    request to the Open Inference Protocol (`path` under /v2) in that protocol's `{"error": message}`."""
    if path == "/v2" or path.startswith("/v2/"):
        envelope: dict = {"error": message}
    else:
        error = {"code": CODES.get(status, "HTTP_ERROR"), "message": message}
        envelope = {"success": False, "id": None, "error": error}
    body = json.dumps(envelope).encode()
    return f"{status} {HTTPStatus(status).phrase}", [("Content-Type", "application/json"), *headers], body
