"""The embedded front against hostile users, round 2 (issue 28, findings 8, 9, 10): RFC 9110/9112 field
syntax, ASCII-only numbers, the header deadline and the body's minimum rate, the per-peer connection
cap, and the API key checked from the head alone (before `100 Continue` and before any body).

A real redis-server and the real app behind the front (no worker: nothing here reaches a model).
"""
from __future__ import annotations

import json
import select
import socket
import time

import pytest

from conftest import ServerThread, make_config
from image_gateway import errors
from image_gateway.front import admission, http11


@pytest.fixture
def start_front(redis_url):
    """Builds a front on the real app for the given settings; stops them after the test."""
    started = []

    def start(**overrides) -> ServerThread:
        from image_gateway.web.app import create_app
        config = make_config(redis_url, **{"client_timeout": 2.0, "request_timeout": 0.5, **overrides})
        server = ServerThread(create_app(config), config)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def connect(port: int, source: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    return sock


def read_until_close(sock: socket.socket, timeout_s: float = 10) -> bytes:
    sock.settimeout(timeout_s)
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def exchange(port: int, request: bytes) -> bytes:
    with connect(port) as sock:
        sock.sendall(request)
        return read_until_close(sock)


def split_answer(raw: bytes) -> tuple[int, dict[str, str], bytes, bytes]:
    """Status, headers (lower-case names) and body of the first final answer in `raw`, and what follows it."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1])
    if status == 100:
        return split_answer(rest)
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", len(rest)))
    return status, headers, rest[:length], rest[length:]


def answer_of(raw: bytes) -> tuple[int, dict[str, str], dict | None]:
    """Status, headers and JSON body of the first final answer in `raw`."""
    status, headers, body, _ = split_answer(raw)
    return status, headers, json.loads(body) if body.startswith(b"{") else None


def assert_envelope(raw: bytes, status: int, code: str) -> dict:
    got, headers, body = answer_of(raw)
    assert (got, body["success"], body["error"]["code"]) == (status, False, code), raw[:400]
    assert headers["connection"] == "close"
    return body


# ------------------------------------------------------------------------------- field syntax (finding 8)
SMUGGLING = [
    b"POST /predict HTTP/1.1\r\nHost: x\r\nX-A: a\nTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n"
    b"5\r\nhello\r\n0\r\n\r\n",                                                    # LF inside a value
    b"POST /predict HTTP/1.1\r\nHost: x\r\nX-A: a\rTransfer-Encoding: chunked\r\nContent-Length: 0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",                      # NUL
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",                      # other CTLs
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\nX-A: b\r\n\r\n",                             # bare LF ending a line
    b"GET /healthz HTTP/1.1\r\n\r\n",                                                # HTTP/1.1 without Host
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n",                          # two Hosts
    b"POST /predict HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",         # chunked on HTTP/1.0
]
BAD_CHUNKED = [                                                                     # a bare LF in a chunk line
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n",
    b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX: a\nb\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", SMUGGLING + BAD_CHUNKED)
def test_control_characters_and_bare_lf_are_a_400_and_a_close(start_front, request_bytes):
    web = start_front()
    raw = exchange(web.port, request_bytes)
    assert split_answer(raw)[3] == b""                  # one answer: never read as two requests
    assert_envelope(raw, 400, "HTTP_ERROR")


def test_a_head_ended_by_bare_lf_is_refused_at_once_not_timed_out(start_front):
    web = start_front(client_timeout=5.0)
    started = time.monotonic()
    raw = exchange(web.port, b"GET /healthz HTTP/1.1\nHost: x\n\n")
    assert time.monotonic() - started < 2
    assert_envelope(raw, 400, "HTTP_ERROR")


@pytest.mark.parametrize("request_bytes", [
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\tb\r\nConnection: close\r\n\r\n",          # HTAB is allowed
    b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: caf\xe9\r\nConnection: close\r\n\r\n",       # so is obs-text
    b"\r\nGET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",                   # a leading empty line
    b"GET /healthz HTTP/1.0\r\n\r\n",                                                       # HTTP/1.0 needs no Host
])
def test_valid_field_syntax_still_passes(start_front, request_bytes):
    web = start_front()
    assert answer_of(exchange(web.port, request_bytes))[0] == 200


# ------------------------------------------------------------------------------- numbers (finding 10)
@pytest.mark.parametrize("value", [b"\xb2", b"\xb25", b"+5", b"-1", b"0x10", b"1_000", b"1e3", b"5 5", b"",
                                   b"9" * 16])
def test_numeric_headers_take_ascii_digits_only(start_front, value):
    """Finding 10: `Inference-Header-Content-Length: ²` was a 500 with a traceback. The Open Inference
    Protocol's routes answer in that protocol's error shape, the others in the gateway's envelope."""
    web = start_front()
    for name in (b"Inference-Header-Content-Length", b"Content-Length"):
        raw = exchange(web.port, b"POST /v2/models/efficientnet_lite0/infer HTTP/1.1\r\nHost: x\r\n"
                                 + name + b": " + value + b"\r\n\r\n")
        status, _, body = answer_of(raw)
        assert status == 400 and set(body) == {"error"} and "ASCII digits" in body["error"], raw
        raw = exchange(web.port, b"POST /predict HTTP/1.1\r\nHost: x\r\n" + name + b": " + value + b"\r\n\r\n")
        assert_envelope(raw, 400, "HTTP_ERROR")


def test_a_target_urlsplit_cannot_parse_is_a_400():
    with pytest.raises(http11.BadRequest, match="malformed request target"):
        http11.parse_head(b"GET http://[::1/x HTTP/1.1\r\nHost: x")
    assert http11.parse_head(b"GET http://h.test/v1/%74asks?q=1 HTTP/1.1\r\nHost: x").path == "/v1/tasks"


def test_the_parser_refuses_what_the_front_refuses():
    for shape in SMUGGLING:
        with pytest.raises(http11.BadRequest):
            http11.parse_head(shape.partition(b"\r\n\r\n")[0])
    for shape in BAD_CHUNKED:
        head, _, body = shape.partition(b"\r\n\r\n")
        assert http11.parse_head(head).chunked
        with pytest.raises(http11.BadRequest):
            http11.Chunked().feed(body)
    with pytest.raises(http11.BadRequest):
        http11.check_line_endings(b"GET / HTTP/1.1\r\nHost: x\n")
    http11.check_line_endings(b"GET / HTTP/1.1\r\nHost: x\r")
    for body in (b"5;a\nb\r\nhello\r\n0\r\n\r\n", b"5\nhello", b"5\r\nhello\r\n0\r\nX: a\x00b\r\n\r\n"):
        with pytest.raises(http11.BadRequest):
            http11.Chunked().feed(body)


# ------------------------------------------------------------------------------- deadlines
def test_a_head_trickled_a_byte_a_second_is_cut_off_at_the_client_timeout(start_front):
    web = start_front(client_timeout=2.0)
    request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"p" * 30
    with connect(web.port) as sock:
        started, raw = time.monotonic(), b""
        for byte in request:
            try:
                sock.sendall(bytes([byte]))
            except OSError:
                pass                                    # closed by the server: read its answer below
            if select.select([sock], [], [], 1.0)[0]:
                raw = read_until_close(sock)
                break
        elapsed = time.monotonic() - started
    assert 1.9 <= elapsed <= 4, elapsed
    body = assert_envelope(raw, 408, "HTTP_ERROR")
    assert "CLIENT_TIMEOUT" in body["error"]["message"]


def trickle_body(port: int, head: bytes, piece: bytes, every_s: float, limit_s: float) -> tuple[bytes, float]:
    """Send `head`, then `piece` every `every_s` until the server answers; (answer, seconds after the head)."""
    with connect(port) as sock:
        sock.sendall(head)
        started = time.monotonic()
        while time.monotonic() - started < limit_s:
            if select.select([sock], [], [], every_s)[0]:
                return read_until_close(sock), time.monotonic() - started
            try:
                sock.sendall(piece)
            except OSError:
                pass
    return b"", limit_s


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_below_the_minimum_rate_gets_408(start_front, chunked):
    web = start_front(client_timeout=1.0, min_body_bytes_per_s=1000)
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: 5000000"
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + framing + b"\r\n\r\n"
    piece = b"a\r\n" + b"x" * 10 + b"\r\n" if chunked else b"x" * 10     # 20 bytes/s: far below 1000
    raw, elapsed = trickle_body(web.port, head, piece, 0.5, 10)
    assert 0.9 <= elapsed <= 3, elapsed                 # 1 s of grace plus ~50 bytes at 1000 bytes/s
    body = assert_envelope(raw, 408, "HTTP_ERROR")
    assert "MIN_BODY_BYTES_PER_S (1000 bytes/s" in body["error"]["message"]


def test_a_body_at_the_minimum_rate_reaches_the_app(start_front):
    web = start_front(client_timeout=1.0, min_body_bytes_per_s=1000)
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 6000\r\n\r\n"
    raw, elapsed = trickle_body(web.port, head, b"x" * 300, 0.1, 10)    # ~3000 bytes/s for 2 s: past the grace
    assert answer_of(raw)[0] == 415 and elapsed >= 1.5                  # the app's answer, not 408


def test_client_min_rate_still_sets_the_body_rate_when_min_body_bytes_per_s_is_unset(start_front):
    web = start_front(client_min_rate=1000)
    assert web.server.body_rate == 1000
    assert start_front(client_min_rate=1000, min_body_bytes_per_s=50).server.body_rate == 50


# ------------------------------------------------------------------------------- connections per peer
def test_connections_over_the_per_peer_cap_get_503_and_a_close(start_front):
    web = start_front(max_connections_per_peer=3, client_timeout=5.0, retry_after=2)
    held = [connect(web.port) for _ in range(3)]
    try:
        for sock in held:                               # each is admitted: it is answered
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        with connect(web.port) as extra:
            extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            raw = read_until_close(extra)
        body = assert_envelope(raw, 503, errors.SERVER_BUSY.code)
        assert answer_of(raw)[1]["retry-after"] == "2" and "MAX_CONNECTIONS_PER_PEER 3" in body["error"]["message"]
        with connect(web.port, source="127.0.0.2") as other_peer:      # another address has its own count
            other_peer.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert answer_of(read_until_close(other_peer))[0] == 200
        held.pop().close()                              # a closed connection frees its place
        deadline = time.monotonic() + 5
        while answer_of(exchange(web.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))[0] \
                != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        for sock in held:
            sock.close()


def test_the_peer_limit_counts_and_releases():
    limit = admission.PeerLimit(2)
    assert limit.admit("a") and limit.admit("a") and not limit.admit("a") and limit.admit("b")
    limit.release("a")
    assert limit.admit("a") and not limit.admit("a")
    for _ in range(3):
        limit.release("b")
    assert limit.open == {"a": 2}
    assert all(admission.PeerLimit(0).admit("a") for _ in range(1000))


# ------------------------------------------------------------------------------- API key (finding 9)
def test_a_keyless_post_gets_401_before_100_continue_and_before_its_body(start_front):
    web = start_front(api_key="sekret")
    for key in (b"", b"X-API-Key: wrong\r\n", b"X-API-Key: sekret2\r\n", b"X-API-Key: s\xe9kret\r\n"):
        with connect(web.port) as sock:
            sock.sendall(b"POST /v1/tasks HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + key
                         + b"Content-Length: 200000000\r\nExpect: 100-continue\r\n\r\n")
            raw = read_until_close(sock)
        assert b"100 Continue" not in raw
        assert raw.startswith(b"HTTP/1.1 401")
        assert_envelope(raw, 401, errors.UNAUTHORIZED.code)


def test_the_open_inference_protocol_gets_its_own_error_shape(start_front):
    web = start_front(api_key="sekret")
    raw = exchange(web.port, b"POST /v2/models/efficientnet_lite0/infer HTTP/1.1\r\nHost: x\r\n"
                             b"Content-Length: 100000\r\nExpect: 100-continue\r\n\r\n")
    status, headers, body = answer_of(raw)
    assert (status, set(body), headers["connection"]) == (401, {"error"}, "close")
    assert b"100 Continue" not in raw


def test_a_keyed_post_gets_100_continue_and_open_routes_need_no_key(start_front):
    web = start_front(api_key="sekret")
    with connect(web.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nX-API-Key: sekret\r\n"
                     b"Content-Length: 2\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert_envelope(read_until_close(sock), 400, "MISSING_IMAGE")
    for request in (b"GET /healthz", b"GET /readyz", b"GET /v2/health/live", b"GET /static/app.js"):
        raw = exchange(web.port, request + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert answer_of(raw)[0] != 401, request


def test_the_front_judges_by_the_web_tiers_rule_only_requests_that_announce_a_body(redis_url):
    config = make_config(redis_url, api_key="sekret")

    def refused(request: bytes) -> bool:
        return admission.key_refused(http11.parse_head(request + b"\r\nHost: x"), config)

    assert refused(b"POST /predict HTTP/1.1\r\nContent-Length: 5")
    assert refused(b"POST /v1/tasks HTTP/1.1\r\nTransfer-Encoding: chunked\r\nX-API-Key: nope")
    assert refused(b"PUT /v1/models HTTP/1.1\r\nContent-Length: 0\r\nExpect: 100-continue")
    assert refused(b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nX-API-Key: sekret\r\nX-API-Key: sekret")
    assert not refused(b"POST /predict HTTP/1.1\r\nContent-Length: 5\r\nX-API-Key: sekret")
    assert not refused(b"POST /predict HTTP/1.1\r\nContent-Length: 0")      # no body: the app's own check
    assert not refused(b"GET /v1/models HTTP/1.1")
    assert not refused(b"POST /healthz HTTP/1.1\r\nContent-Length: 5")      # open routes stay open
    assert not admission.key_refused(http11.parse_head(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 5"),
                                     make_config(redis_url))                  # no API_KEY: nothing to check


# ------------------------------------------------------------------------------- closing without a reset
def test_a_refused_body_the_client_keeps_sending_does_not_reset_the_answer_away(start_front):
    web = start_front()
    with connect(web.port) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 99999999\r\n\r\n")
        time.sleep(0.2)                                 # the 413 is on its way; the client keeps sending
        try:
            sock.sendall(b"x" * 512 * 1024)
        except OSError:
            pass
        raw = read_until_close(sock)
    assert_envelope(raw, 413, "PAYLOAD_TOO_LARGE")
