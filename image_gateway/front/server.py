"""The embedded default's web server: a small asyncio front before the WSGI app.

One event loop reads each request whole (line, headers, body) before a thread of a WEB_THREADS pool
runs the WSGI app on it, so an idle or slow client parks a connection in the loop and never holds a
thread. A request's line and headers must arrive within CLIENT_TIMEOUT of its first byte, however they
trickle in; its body must keep up MIN_BODY_BYTES_PER_S on average, counted from that first byte after a
grace of CLIENT_TIMEOUT (a 100 KB photo at the default 16384 bytes/s: 16 s in all); an answer must be
read at CLIENT_MIN_RATE. Otherwise the client gets 408 (or nothing, for an answer) and the connection is
closed. An idle keep-alive connection is closed after CLIENT_TIMEOUT. Bodies over 1 MiB wait in a
temporary file. Before any body: at most MAX_CONNECTIONS_PER_PEER connections per client address (503
beyond), and with API_KEY set a request that announces a body without the key it needs is refused
401 from its head alone, before `100 Continue` (admission.py). A connection closed after an answer is
closed lingering: half-closed, then what the client still sends is dropped for up to LINGER_S, so its
unread bytes do not make the kernel reset the connection before the client has read the answer.

Why not cheroot (measured, issue 17): its threads read the request themselves, so 400 connections
holding a partial header held all 320 threads for its 10 s read timeout (a normal request took 9.8 s),
and its timeout is per read, so a body sent at 2 bytes/s held a thread for good.

The loop is uvloop's (libuv): against asyncio's own, the web tier spends about 0.2 ms less CPU per image at
16 clients (measured with `python -m bench --serving --baseline`, issue 24), the same protocol code.
"""
from __future__ import annotations

import asyncio
import email.utils
import logging
import socket
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import uvloop

from image_gateway import errors
from image_gateway.front import wsgi
from image_gateway.front.admission import PeerLimit, clients_of, key_refused
from image_gateway.front.http11 import (
    MAX_HEADER_BYTES,
    BadRequest,
    Chunked,
    Head,
    check_line_endings,
    error_answer,
    parse_head,
)
from image_gateway.settings import Settings

log = logging.getLogger("gateway.web")

SPOOL_BYTES = 1024 * 1024        # a body beyond this waits in a temporary file, not in memory
BULK_PATHS = ("/v1/tasks",)      # routes whose bodies may reach MAX_TASK_BYTES (web/tasks.py); others MAX_UPLOAD_BYTES
IDLE, HEAD, BODY, APP, SEND, LINGER = "idle", "head", "body", "app", "send", "linger"
LINGER_S = 2.0                   # the most a closing connection waits for the client's unread bytes and EOF


# ------------------------------------------------------------------------------- one connection
class Connection(asyncio.Protocol):
    """One client connection: IDLE (between requests) -> HEAD -> BODY -> APP (a pool thread) -> SEND,
    and LINGER after the last answer."""

    def __init__(self, front: Front):
        self.front, self.loop, self.config = front, front.loop, front.config
        self.transport: asyncio.Transport | None = None
        self.buffer, self.state, self.timer, self.paused = bytearray(), IDLE, None, False
        self.head: Head | None = None
        self.body, self.chunked, self.received, self.expected, self.limit = None, None, 0, 0, 0
        self.too_large = self.close_after = self.admitted = False
        self.started, self.scanned = 0.0, 0          # scanned: head bytes already searched for its end

    def connection_made(self, transport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(high=0)       # pause_writing/resume_writing say when an answer is out
        self.peer = transport.get_extra_info("peername") or ("", 0)
        self.front.connections.add(self)
        self.admitted = self.front.peers.admit(str(self.peer[0]))
        if self.admitted:
            self.wait_for_request()
        else:
            log.debug("refusing a connection from %s: MAX_CONNECTIONS_PER_PEER", self.peer)
            self.refuse(503, f"too many connections from one address (MAX_CONNECTIONS_PER_PEER "
                             f"{self.front.peers.cap}); retry after Retry-After",
                        (("Retry-After", str(self.config.retry_after)),))

    def connection_lost(self, exc) -> None:
        self.cancel_timer()
        self.front.connections.discard(self)
        if self.admitted:
            self.front.peers.release(str(self.peer[0]))
        if self.body is not None and self.state != APP:
            self.body.close()

    def eof_received(self) -> bool:
        self.close_after = True
        return self.state in (APP, SEND)                # half-closed: the answer can still be written; else close

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        if self.state == SEND:
            self.sent()

    def set_timer(self, when: float, action) -> None:
        self.cancel_timer()
        self.timer = self.loop.call_at(when, action)

    def cancel_timer(self) -> None:
        if self.timer:
            self.timer.cancel()
            self.timer = None

    def wait_for_request(self) -> None:
        """Between requests: closed after CLIENT_TIMEOUT idle, or at once when the server stops."""
        self.state, self.head, self.body, self.too_large = IDLE, None, None, False
        if self.front.draining or self.close_after:
            self.transport.close()
            return
        self.set_timer(self.loop.time() + self.config.client_timeout, self.transport.close)
        self.transport.resume_reading()
        if self.buffer:                                  # a pipelined request is already here
            self.data_received(b"")

    def data_received(self, data: bytes) -> None:
        try:
            self.receive(data)
        except BadRequest as exc:
            self.refuse(exc.status, exc.message, path=exc.path)

    def refuse(self, status: int, message: str, headers: tuple[tuple[str, str], ...] = (), path: str = "") -> None:
        """The front's own answer, in the envelope of the request's protocol; the connection then closes."""
        self.close_after = True
        self.send(*error_answer(status, message, headers, path or (self.head.path if self.head else "")))

    def receive(self, data: bytes) -> None:
        if self.state == LINGER:                        # the answer is out: drop what still comes
            return
        if self.state in (APP, SEND):                   # reading is paused; keep what already came
            self.buffer += data
            return
        if self.state == IDLE:
            self.state, self.started, self.scanned = HEAD, self.loop.time(), 0
            self.set_timer(self.started + self.config.client_timeout, self.timed_out)
        if self.state == HEAD:
            if not self.receive_head(data):
                return
            data = bytes(self.buffer)
            self.buffer.clear()
            if not self.start_body():
                self.buffer += data
                return
        self.feed_body(data)

    def receive_head(self, data: bytes) -> bool:
        """Add `data` to the head; True once the head is parsed (self.buffer then holds what followed it)."""
        self.buffer += data
        while self.buffer.startswith(b"\r\n"):          # RFC 9112 2.2: empty lines before a request line
            del self.buffer[:2]
            self.scanned = 0
        end = self.buffer.find(b"\r\n\r\n", max(self.scanned - 3, 0))
        if end < 0 or end > MAX_HEADER_BYTES:
            if end > MAX_HEADER_BYTES or len(self.buffer) > MAX_HEADER_BYTES:
                raise BadRequest(431, f"the request line and headers exceed {MAX_HEADER_BYTES} bytes")
            check_line_endings(self.buffer, self.scanned)   # all of it is head: a bare LF is a 400 now, not a wait
            self.scanned = len(self.buffer)
            return False
        self.head = parse_head(bytes(self.buffer[:end]))
        del self.buffer[:end + 4]
        if key_refused(self.head, self.config, self.front.clients):
            raise BadRequest(401, errors.UNAUTHORIZED.description)     # before 100 Continue and any body
        return True

    def start_body(self) -> bool:
        """Prepare for the body; False when there is none to read (the request goes to the app now)."""
        head, config = self.head, self.config
        bulk = head.path.startswith(BULK_PATHS)
        self.limit = max(config.max_upload_bytes, getattr(config, "max_task_bytes", 0)) if bulk \
            else config.max_upload_bytes
        self.body, self.received = tempfile.SpooledTemporaryFile(SPOOL_BYTES), 0
        self.chunked = Chunked() if head.chunked else None
        self.expected = head.length
        if head.length > self.limit:                    # never read: the app answers 413 from the length
            self.too_large, self.close_after, self.expected = True, True, 0
        if not head.chunked and not self.expected:
            self.dispatch()
            return False
        if head.expect_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.state = BODY
        self.set_timer(self.body_deadline(), self.check_body_rate)
        return True

    def body_deadline(self) -> float:
        """When the body received so far falls below MIN_BODY_BYTES_PER_S (after the CLIENT_TIMEOUT grace)."""
        return self.started + self.config.client_timeout + self.received / self.front.body_rate

    def check_body_rate(self) -> None:
        """The body timer: 408 when the body is behind its rate, else wait for the deadline its bytes earned."""
        deadline = self.body_deadline()
        if self.loop.time() >= deadline:
            self.timed_out()
        else:
            self.set_timer(deadline, self.check_body_rate)

    def feed_body(self, data: bytes) -> None:
        if self.chunked:
            part, rest = self.chunked.feed(data)
            done = self.chunked.done
        else:
            part, rest = data[:self.expected - self.received], data[self.expected - self.received:]
            done = self.received + len(part) == self.expected
        self.received += len(part)
        if self.received > self.limit:                  # a chunked body past the limit
            self.too_large, self.close_after = True, True
            self.dispatch()
            return
        self.body.write(part)
        if done:
            self.buffer += rest
            self.dispatch()

    def dispatch(self) -> None:
        """The whole request is here: a pool thread runs the app on it."""
        self.state = APP
        self.cancel_timer()
        self.transport.pause_reading()
        self.body.seek(0)
        environ = wsgi.environ(self.head, self.config, self.peer, self.body, self.received, self.too_large)
        future = self.loop.run_in_executor(self.front.pool, wsgi.run_app, self.front.wsgi_app, environ)
        future.add_done_callback(self.respond)

    def respond(self, future) -> None:
        self.body.close()
        if self.transport.is_closing():
            return
        try:
            answer = future.result()
        except Exception:                               # the app answers its own errors; this is a bug
            log.exception("the WSGI app failed")
            answer = error_answer(500, "an unexpected error in the gateway", (), self.head.path)
        self.send(*answer)

    def send(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        head = self.head
        keep = head is not None and head.keep_alive and not self.close_after and not self.front.draining
        names = {name.lower() for name, _ in headers}
        if "connection" in names and any(v.lower() == "close" for n, v in headers if n.lower() == "connection"):
            keep = False
        extra = [("Date", email.utils.formatdate(usegmt=True))] if "date" not in names else []
        if "content-length" not in names and not status.startswith(("1", "204", "304")):
            extra.append(("Content-Length", str(len(body))))
        if "connection" not in names:
            extra.append(("Connection", "keep-alive" if keep else "close"))
        if head is not None and head.method == "HEAD":
            body = b""
        lines = "".join(f"{name}: {value}\r\n" for name, value in [*headers, *extra])
        self.close_after, self.state = not keep, SEND
        self.transport.pause_reading()
        self.transport.write(f"HTTP/1.1 {status}\r\n{lines}\r\n".encode("latin-1") + body)
        if self.paused:                                 # a slow reader: the rest must go out in time
            budget = self.config.client_timeout + len(body) / self.config.client_min_rate
            self.set_timer(self.loop.time() + budget, self.transport.abort)
        else:
            self.sent()

    def sent(self) -> None:
        self.cancel_timer()
        if self.close_after:
            self.linger()
        else:
            self.wait_for_request()

    def linger(self) -> None:
        """Close after an answer: send FIN, drop what the client still sends until its EOF or LINGER_S."""
        self.state = LINGER
        self.buffer.clear()
        if self.transport.is_closing() or not self.transport.can_write_eof():
            self.transport.close()
            return
        self.transport.write_eof()
        self.transport.resume_reading()
        self.set_timer(self.loop.time() + min(LINGER_S, self.config.client_timeout), self.transport.close)

    def timed_out(self) -> None:
        log.debug("closing a slow client %s", self.peer)
        if self.state == BODY:
            message = (f"the request body arrived slower than MIN_BODY_BYTES_PER_S ({self.front.body_rate} bytes/s "
                       f"on average after CLIENT_TIMEOUT {self.config.client_timeout:g} s)")
        else:
            message = (f"the request line and headers did not arrive within CLIENT_TIMEOUT "
                       f"({self.config.client_timeout:g} s)")
        self.refuse(408, message)


# ------------------------------------------------------------------------------- the server
class Front:
    """`prepare()` binds, `serve()` runs the loop in the calling thread until `stop()` (from another thread):
    stop accepting, close idle connections, let requests in flight (even half-received) get their answers
    within REQUEST_TIMEOUT + 1 s, then close the rest."""

    def __init__(self, app, config: Settings):
        if config.client_timeout <= 0 or config.client_min_rate < 1:
            raise ValueError("CLIENT_TIMEOUT must be > 0 and CLIENT_MIN_RATE >= 1")
        if config.min_body_bytes_per_s < 0 or config.max_connections_per_peer < 0:
            raise ValueError("MIN_BODY_BYTES_PER_S and MAX_CONNECTIONS_PER_PEER must be >= 0")
        self.wsgi_app, self.config = app, config
        self.clients = clients_of(app)          # who holds a key: checked from a request's head, before its body
        self.body_rate = config.min_body_bytes_per_s or config.client_min_rate   # 0: CLIENT_MIN_RATE's value
        self.peers = PeerLimit(config.max_connections_per_peer)
        self.pool = ThreadPoolExecutor(config.web_threads, thread_name_prefix="web")
        self.connections: set[Connection] = set()
        self.sock: socket.socket | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.draining = False
        self.lock = threading.Lock()
        self.stop_requested, self.finished = threading.Event(), threading.Event()
        self.stopping = asyncio.Event()

    def prepare(self) -> None:
        family = socket.AF_INET6 if ":" in self.config.host else socket.AF_INET
        self.sock = socket.create_server((self.config.host, self.config.port), family=family, backlog=1024)

    def serve(self) -> None:
        with self.lock:
            if self.stop_requested.is_set():
                self.sock.close()
                self.finished.set()
                return
            self.loop = uvloop.new_event_loop()
        try:
            self.loop.run_until_complete(self.run())
        finally:
            self.loop.close()
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.finished.set()

    async def run(self) -> None:
        server = await self.loop.create_server(lambda: Connection(self), sock=self.sock, backlog=1024)
        await self.stopping.wait()
        server.close()                                  # the listening socket: new connections are refused
        self.draining = True
        for connection in list(self.connections):
            if connection.state == IDLE:
                connection.transport.close()
        deadline = self.loop.time() + self.config.request_timeout + 1
        while self.connections and self.loop.time() < deadline:
            await asyncio.sleep(0.05)
        for connection in list(self.connections):
            connection.transport.abort()
        await asyncio.sleep(0)                          # let connection_lost run

    def stop(self) -> None:
        with self.lock:
            self.stop_requested.set()
            loop = self.loop
        if loop is None:                                # prepared, never served
            if self.sock:
                self.sock.close()
            return
        try:
            loop.call_soon_threadsafe(self.stopping.set)
        except RuntimeError:                            # the loop has already closed
            return
        self.finished.wait(self.config.request_timeout + 5)
