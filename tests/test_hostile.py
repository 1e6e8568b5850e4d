"""Slow and idle clients against the embedded default's web server (http_front.Front), and its HTTP/1.1.

A real redis-server, the real app, a worker thread with the real model. 400 connections that hold a
partial header, or send a body at 1 byte/s, must not delay a normal /predict (issue 17: with cheroot
it took 9.8 s), must not hold a pool thread, and must be closed once CLIENT_TIMEOUT (plus the body's
length at CLIENT_MIN_RATE) has passed. Timings go to tests/artifacts/hostile.json.
"""
from __future__ import annotations

import json
import selectors
import socket
import threading
import time

import pytest
import requests

from conftest import ARTIFACTS, DATA, ServerThread, WorkerThread, make_config

HOSTILE = 400
CLIENT_TIMEOUT = 2.0
MIN_RATE = 16384
# The issue asks for 1 s; the bound leaves room for a 2-core machine shared with other test runs.
# The measured figure is written to tests/artifacts/hostile.json.
NORMAL_BOUND_S = 3.0
BOUNDARY = "hostile-boundary"
CAT = (DATA / "cat.jpg").read_bytes()
CAT_BODY = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"cat.jpg\"\r\n"
            "Content-Type: image/jpeg\r\n\r\n").encode() + CAT + f"\r\n--{BOUNDARY}--\r\n".encode()
CAT_HEAD = (f"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
            f"Content-Length: {len(CAT_BODY)}\r\n\r\n").encode()


def record(name: str, value) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / "hostile.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    results[name] = value
    path.write_text(json.dumps(results, indent=2) + "\n")


@pytest.fixture
def gateway(redis_url, classifier):
    config = make_config(redis_url, client_timeout=CLIENT_TIMEOUT, client_min_rate=MIN_RATE, request_timeout=10.0,
                         max_connections_per_peer=0)   # all 400 come from 127.0.0.1: the cap is test_front_strict's
    from image_gateway.web.app import create_app
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    assert normal_predict(web.url)[0] == 200          # warm: the model's first call is slow
    yield web
    worker.stop()
    web.stop()


def normal_predict(url: str) -> tuple[int, float, str]:
    started = time.perf_counter()
    response = requests.post(f"{url}/predict", files={"image": ("cat.jpg", CAT)}, timeout=30)
    label = response.json()["predictions"][0]["label"] if response.status_code == 200 else ""
    return response.status_code, time.perf_counter() - started, label


def open_connections(port: int, first_bytes: bytes) -> list[socket.socket]:
    sockets = []
    for _ in range(HOSTILE):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(first_bytes)
        sockets.append(sock)
    return sockets


def close_times(sockets: list[socket.socket], since: float, timeout_s: float) -> dict[int, float]:
    """Seconds after `since` at which the server closed each socket (EOF or reset), within timeout_s."""
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(sockets):
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ, index)
    closed: dict[int, float] = {}
    deadline = time.monotonic() + timeout_s
    while len(closed) < len(sockets) and time.monotonic() < deadline:
        for key, _ in selector.select(0.1):
            try:
                data = key.fileobj.recv(65536)
            except OSError:
                data = b""
            if not data:
                closed[key.data] = time.monotonic() - since
                selector.unregister(key.fileobj)
    selector.close()
    return closed


def pool_threads() -> int:
    return sum(thread.name.startswith("web_") for thread in threading.enumerate())


def drip(sockets: list[socket.socket], stop: threading.Event) -> None:
    """One byte of the body per second on every socket."""
    offset = 0
    while not stop.wait(1.0):
        for sock in sockets:
            try:
                sock.send(CAT_BODY[offset:offset + 1])
            except OSError:
                pass
        offset += 1


def assert_normal_request_unaffected(url: str, scenario: str) -> None:
    threads_before = pool_threads()
    timings = []
    for _ in range(3):
        status, elapsed_s, label = normal_predict(url)
        assert status == 200 and label in {"Egyptian_cat", "tabby", "tiger_cat"}
        timings.append(round(elapsed_s, 3))
    record(f"{scenario}_normal_predict_s", timings)
    assert max(timings) < NORMAL_BOUND_S, timings
    assert pool_threads() <= threads_before + 2       # the hostile connections hold no thread


def test_400_partial_headers_neither_delay_a_request_nor_hold_threads(gateway):
    started = time.monotonic()
    sockets = open_connections(gateway.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/")
    try:
        time.sleep(0.3)
        assert_normal_request_unaffected(gateway.url, "partial_headers")
        closed = close_times(sockets, started, CLIENT_TIMEOUT + 5)
    finally:
        for sock in sockets:
            sock.close()
    record("partial_headers_closed_after_s", [round(min(closed.values()), 2), round(max(closed.values()), 2)])
    assert len(closed) == HOSTILE
    assert CLIENT_TIMEOUT - 0.1 <= min(closed.values()) and max(closed.values()) <= CLIENT_TIMEOUT + 3


def test_400_bodies_at_one_byte_per_second_neither_delay_a_request_nor_hold_threads(gateway):
    started = time.monotonic()
    sockets = open_connections(gateway.port, CAT_HEAD)
    stop = threading.Event()
    dripper = threading.Thread(target=drip, args=(sockets, stop), daemon=True)
    dripper.start()
    budget_s = CLIENT_TIMEOUT + 2 / MIN_RATE   # MIN_BODY_BYTES_PER_S: the grace, plus what ~2 bytes earned
    try:
        time.sleep(1.2)
        assert_normal_request_unaffected(gateway.url, "slow_bodies")
        closed = close_times(sockets, started, budget_s + 5)
    finally:
        stop.set()
        dripper.join(5)
        for sock in sockets:
            sock.close()
    record("slow_bodies_closed_after_s", [round(min(closed.values()), 2), round(max(closed.values()), 2)])
    assert len(closed) == HOSTILE
    assert budget_s - 0.1 <= min(closed.values()) and max(closed.values()) <= budget_s + 3


def exchange(port: int, request: bytes, timeout_s: float = 10) -> bytes:
    """Send raw bytes, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def envelope_of(answer: bytes) -> tuple[int, dict]:
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.fixture
def web_only(redis_url):
    config = make_config(redis_url, client_timeout=1.0, request_timeout=0.5)
    from image_gateway.web.app import create_app
    web = ServerThread(create_app(config), config)
    yield web
    web.stop()


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n", 400),   # smuggling shape
    (b"GET / HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n folded: line\r\n\r\n", 400),
    (b"NOT HTTP\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000 + b"\r\n\r\n", 431),
])
def test_malformed_requests_get_the_error_envelope_and_a_close(web_only, request_bytes, status):
    answer = exchange(web_only.port, request_bytes)
    got_status, body = envelope_of(answer)
    assert got_status == status and body["success"] is False and body["error"]["code"] == "HTTP_ERROR"
    assert b"Connection: close" in answer


def test_chunked_body_expect_continue_pipelining_and_head(web_only):
    chunked = (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json"
               b"\r\n\r\n6\r\n{\"imag\r\n9\r\ne\": \"!!\"}\r\n0\r\n\r\n")
    pipelined = chunked + b"HEAD /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    answer = exchange(web_only.port, pipelined)
    first, second = answer.split(b"HTTP/1.1 ", 2)[1:]
    assert first.startswith(b"400") and b'"INVALID_BASE64"' in first       # the chunked JSON reached the app
    assert second.startswith(b"200") and second.endswith(b"\r\n\r\n")      # HEAD: headers only
    with socket.create_connection(("127.0.0.1", web_only.port), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 2\r\nExpect: 100-continue\r\n\r\n")
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"{}")
        assert b"MISSING_IMAGE" in sock.recv(65536)


def test_a_declared_body_over_the_limit_is_refused_unread_by_the_app(web_only):
    answer = exchange(web_only.port, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                     b"Content-Length: 99999999999\r\n\r\n")
    status, body = envelope_of(answer)
    assert status == 413 and body["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_an_idle_keep_alive_connection_is_closed_after_the_client_timeout(web_only):
    with socket.create_connection(("127.0.0.1", web_only.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 200")
        started = time.monotonic()
        assert sock.recv(65536) == b""
        assert 0.9 <= time.monotonic() - started <= 3
