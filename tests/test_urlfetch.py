"""The URL fetcher's SSRF guard and fetch limits.

Network rule: nothing here may connect outside 127.0.0.0/8 or ::1, not even to an address the guard should
refuse. Two autouse fixtures enforce it: `socket.socket.connect` fails the test for any other address, and
`socket.getaddrinfo` is a stub that knows only made-up *.test names (numeric hosts never leave the process).
"""
from __future__ import annotations

import ipaddress
import shutil
import socket
import socketserver
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from image_gateway import urlfetch
from image_gateway.urlfetch import UrlFetchFailed, UrlNotAllowed, UrlPolicy, UrlTooLarge, fetch_image, parse_allowlist

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
LOOPBACK = UrlPolicy(allowlist=("127.0.0.0/8",), timeout_s=3.0, max_bytes=4096)


class Net:
    """What the tests' sockets did: connection attempts and name lookups."""

    def __init__(self) -> None:
        self.connects: list[str] = []
        self.lookups: list[str] = []
        self.names: dict[str, object] = {"localhost": ["127.0.0.1", "::1"]}
        self.allow_loopback = True


@pytest.fixture(autouse=True)
def net(monkeypatch) -> Net:
    """Fail the test on a connection outside loopback (or any, once `allow_loopback` is off); stub DNS.
    Only the test's own thread is recorded: a background thread of another test's gateway (a task feeder
    reconnecting to its Redis) may look up 127.0.0.1 meanwhile."""
    state, real_connect, real_getaddrinfo = Net(), socket.socket.connect, socket.getaddrinfo
    owner = threading.get_ident()

    def connect(sock, address):
        if threading.get_ident() == owner:
            state.connects.append(address[0])
        ip = ipaddress.ip_address(address[0])
        ip = getattr(ip, "ipv4_mapped", None) or ip
        if not (state.allow_loopback and ip.is_loopback):
            raise AssertionError(f"the test tried to connect to {address!r}")
        return real_connect(sock, address)

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        if threading.get_ident() == owner:
            state.lookups.append(host)
        answer = state.names.get(host)
        if answer is None:  # numeric hosts only: never a DNS query
            try:
                return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            except socket.gaierror:
                raise socket.gaierror(socket.EAI_NONAME, f"stub resolver: {host!r} unknown") from None
        addrs = answer() if callable(answer) else answer
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (a, port, 0, 0)) if ":" in a
                else (socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port)) for a in addrs]

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return state


@pytest.fixture
def no_connect(net: Net) -> Net:
    """Any connection at all, loopback included, fails the test: the guard must refuse before connecting."""
    net.allow_loopback = False
    return net


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, body: bytes = b"", length: bool = True, **headers: str) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        if length:
            self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def drip(self, data: bytes, pause: float) -> None:
        try:
            for i in range(len(data)):
                self.wfile.write(data[i:i + 1])
                time.sleep(pause)
        except OSError:
            pass
        self.close_connection = True

    def do_GET(self) -> None:
        self.server.seen.append({"path": self.path, "headers": dict(self.headers)})
        path, query = urlsplit(self.path).path, parse_qs(urlsplit(self.path).query)
        if path == "/cat.png":
            self.reply(200, IMAGE, Content_Type="image/png")
        elif path == "/host":
            self.reply(200, self.headers["Host"].encode())
        elif path.startswith("/hop/"):
            left = int(path.rsplit("/", 1)[1])
            if left:
                self.reply(302, Location=f"/hop/{left - 1}")
            else:
                self.reply(200, IMAGE)
        elif path == "/to":
            self.reply(302, Location=query["u"][0])
        elif path == "/no-location":
            self.reply(302)
        elif path == "/cookie":
            self.reply(302, Location="/cat.png", Set_Cookie="session=secret; Path=/")
        elif path == "/size":
            n = int(query["n"][0])
            self.reply(200, b"x" * n, length=query.get("length") == ["1"])
        elif path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"".join(b"400\r\n" + b"y" * 1024 + b"\r\n" for _ in range(8)) + b"0\r\n\r\n")
        elif path == "/short":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            self.wfile.write(b"z" * 10)
            self.close_connection = True
        elif path == "/announce":  # claims 1 GB, sends 10 bytes, then stalls
            self.send_response(200)
            self.send_header("Content-Length", str(10**9))
            self.end_headers()
            self.drip(b"a" * 10, 0.2)
        elif path == "/gzip":
            self.reply(200, b"\x1f\x8b" + b"\0" * 20, Content_Encoding="gzip")
        elif path == "/slow":
            self.send_response(200)
            self.send_header("Content-Length", "60")
            self.end_headers()
            self.drip(b"s" * 60, 0.05)
        elif path == "/slow-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.drip(b"X-Drip: " + b"d" * 60, 0.05)
        else:
            self.reply(404, b"not here")


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:  # skip HTTPServer's getfqdn(): no reverse DNS lookup
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def start(tls: ssl.SSLContext | None = None) -> Server:
    srv = Server(("127.0.0.1", 0), Handler)
    srv.seen = []
    if tls is not None:
        srv.socket = tls.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return srv


@pytest.fixture(scope="module")
def http_server():
    srv = start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def base(http_server) -> str:
    http_server.seen.clear()
    return f"http://127.0.0.1:{http_server.server_port}"


# --- addresses as data ---------------------------------------------------------------------------------------

REFUSED = ["127.0.0.1", "127.255.0.9", "10.0.0.1", "172.16.5.4", "172.31.255.255", "192.168.1.1",
           "169.254.169.254", "169.254.0.1", "100.64.0.1", "100.127.255.254", "224.0.0.1", "239.255.255.250",
           "240.0.0.1", "255.255.255.255", "0.0.0.0", "0.1.2.3", "192.0.0.8", "192.0.2.1", "198.18.0.1",
           "::", "::1", "::ffff:127.0.0.1", "::ffff:10.0.0.1", "::ffff:169.254.169.254", "::127.0.0.1",
           "::ffff:0:7f00:1", "64:ff9b::a00:1", "64:ff9b::7f00:1", "64:ff9b:1::1", "2002:7f00:1::1",
           "2002:a00:1::", "2001::1", "2001:db8::1", "fc00::1", "fd00:ec2::254", "fe80::1", "fec0::1", "ff02::1"]
PUBLIC = ["8.8.8.8", "1.1.1.1", "93.184.216.34", "2606:4700:4700::1111", "2a00:1450:4001:80b::200e",
          "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"]


@pytest.mark.parametrize("address", REFUSED)
def test_non_public_addresses_are_refused(address: str) -> None:
    assert urlfetch._refusal_reason(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", PUBLIC)
def test_public_addresses_pass(address: str) -> None:
    assert urlfetch._refusal_reason(ipaddress.ip_address(address)) is None


def test_parse_allowlist_normalises_and_rejects_junk() -> None:
    assert parse_allowlist("") == ()
    assert parse_allowlist(" Img.Test., *.CDN.test ,10.1.2.0/24,127.0.0.1,, ::1") == (
        "img.test", "*.cdn.test", "10.1.2.0/24", "127.0.0.1/32", "::1/128")
    for bad in ("10.0.0.0/33", "exa mple.test", "*", "http://x.test", "a.*.test"):
        with pytest.raises(ValueError):
            parse_allowlist(bad)


def test_tls_verifies_certificate_and_host_name() -> None:
    context = urlfetch._tls_context()
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


# --- refused before any connection ---------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "http://127.0.0.1/", "http://localhost/", "http://[::1]/", "http://2130706433/", "http://0x7f.1/",
    "http://017700000001/", "http://127.1/", "http://0x7f000001/", "http://0.0.0.0/", "http://0/", "http://[::]/",
    "http://10.0.0.1/", "http://172.16.5.4/", "http://192.168.1.1/", "http://169.254.169.254/latest/meta-data/",
    "http://100.64.0.1/", "http://224.0.0.1/", "http://[::ffff:127.0.0.1]/", "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:7f00:1]/", "http://[::ffff:a9fe:a9fe]/", "http://[64:ff9b::a00:1]/", "http://[2002:a00:1::]/",
    "http://[fd00:ec2::254]/", "http://[fe80::1]/", "http://[ff02::1]/", "https://127.0.0.1:8443/x",
    "http://localhost./", "http://LOCALHOST:6379/"])
def test_loopback_private_and_odd_spellings_refused_without_connecting(url: str, no_connect: Net) -> None:
    with pytest.raises(UrlNotAllowed, match="is not allowed"):
        fetch_image(url, UrlPolicy())
    assert no_connect.connects == []


@pytest.mark.parametrize("url", ["http://2130706433/", "http://0x7f.1/", "http://017700000001/", "http://[::1]/"])
def test_odd_spellings_judged_by_their_address_beside_an_allowlist(url: str, no_connect: Net) -> None:
    with pytest.raises(UrlNotAllowed, match="loopback"):
        fetch_image(url, UrlPolicy(allowlist=("10.0.0.0/8",)))
    assert no_connect.connects == [] and no_connect.lookups == []


@pytest.mark.parametrize("url", [
    "file:///etc/passwd", "gopher://127.0.0.1:70/_stats", "ftp://127.0.0.1/x.png", "data:image/png;base64,AAAA",
    "javascript:alert(1)", "//127.0.0.1/cat.png", "127.0.0.1/cat.png", "", "http://", "http:///cat.png",
    "http://user:pass@127.0.0.1/cat.png", "http://user@127.0.0.1/", "http://127.0.0.1:80@10.0.0.1/",
    "http://127.0.0.1\\@10.0.0.1/", "http://exa mple.test/", "http://127.0.0.1:99999/", "http://127.0.0.1/\r\nX: y",
    "http://[fe80::1%25eth0]/"])
def test_bad_schemes_userinfo_and_malformed_urls_refused(url: str, no_connect: Net) -> None:
    with pytest.raises(UrlNotAllowed):
        fetch_image(url, LOOPBACK)
    assert no_connect.connects == []


def test_name_resolving_to_public_and_private_is_refused(no_connect: Net) -> None:
    no_connect.names["mixed.test"] = ["93.184.216.34", "10.0.0.1"]
    no_connect.names["mixed6.test"] = ["93.184.216.34", "::ffff:127.0.0.1"]
    for host in ("mixed.test", "mixed6.test"):
        with pytest.raises(UrlNotAllowed, match=f"{host}.*not allowed"):
            fetch_image(f"http://{host}/cat.png", UrlPolicy())
    no_connect.names["half.test"] = ["127.0.0.1", "10.0.0.1"]
    with pytest.raises(UrlNotAllowed, match="half.test.*non-public") as refused:   # not which address, nor its kind
        fetch_image("http://half.test/", LOOPBACK)
    assert "10.0.0.1" not in str(refused.value) and "private" not in str(refused.value)
    assert no_connect.connects == []


def test_an_allowlist_adds_internal_sources_and_keeps_the_public_internet(net: Net, monkeypatch) -> None:
    """URL_ALLOWLIST is additive: a public host stays reachable beside a loopback entry (stubbed dial)."""
    net.names["public.test"] = ["93.184.216.34"]
    dialled = []

    def fake_connect(addrs, port, deadline):
        dialled.append(addrs)
        raise ConnectionRefusedError

    monkeypatch.setattr(urlfetch, "_connect", fake_connect)
    with pytest.raises(UrlFetchFailed, match="ConnectionRefusedError"):
        fetch_image("http://public.test/cat.png", LOOPBACK)
    assert dialled == [(ipaddress.ip_address("93.184.216.34"),)] and net.connects == []


def test_public_host_passes_guard_and_pins_the_checked_address(net: Net, monkeypatch) -> None:
    """Empty allowlist: a public name is admitted and the socket gets the resolved IP (stubbed, no connection)."""
    net.names["public.test"] = ["93.184.216.34"]
    dialled = []

    def fake_connect(addrs, port, deadline):
        dialled.append((addrs, port))
        raise ConnectionRefusedError

    monkeypatch.setattr(urlfetch, "_connect", fake_connect)
    with pytest.raises(UrlFetchFailed, match="ConnectionRefusedError"):
        fetch_image("http://public.test:8080/cat.png", UrlPolicy())
    assert dialled == [((ipaddress.ip_address("93.184.216.34"),), 8080)]
    assert net.connects == [] and net.lookups == ["public.test"]


def test_unresolvable_name_fails_cleanly(net: Net) -> None:
    with pytest.raises(UrlFetchFailed, match="cannot resolve host 'nowhere.test'"):
        fetch_image("http://nowhere.test/", UrlPolicy())
    assert net.connects == []


# --- a real server on 127.0.0.1 ------------------------------------------------------------------------------

def test_fetches_image_with_identity_encoding_and_no_cookies(base: str, http_server, net: Net) -> None:
    assert fetch_image(f"{base}/cat.png", LOOPBACK) == IMAGE
    headers = http_server.seen[-1]["headers"]
    assert headers["Accept-Encoding"] == "identity" and "Cookie" not in headers
    assert net.connects == ["127.0.0.1"]


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "017700000001", "127.1", "[::ffff:127.0.0.1]"])
def test_odd_spellings_mean_loopback(host: str, http_server, base: str) -> None:
    """The spellings really reach 127.0.0.1 (allowlisted here), which is why they are refused above."""
    if host.startswith("[") and not socket.has_ipv6:
        pytest.skip("no IPv6")
    assert fetch_image(f"http://{host}:{http_server.server_port}/cat.png", LOOPBACK) == IMAGE


def test_connects_to_checked_ip_with_original_host_header(http_server, net: Net) -> None:
    """DNS rebinding: the name is looked up once; later answers (10.0.0.1) are never used."""
    answers = iter([["127.0.0.1"]])
    net.names["pinned.test"] = lambda: next(answers, ["10.0.0.1"])
    port = http_server.server_port
    assert fetch_image(f"http://pinned.test:{port}/host", LOOPBACK) == f"pinned.test:{port}".encode()
    assert net.lookups == ["pinned.test"] and net.connects == ["127.0.0.1"]


def test_allowlisted_host_names_and_wildcards(http_server, net: Net) -> None:
    for name in ("images.test", "a.cdn.test", "cdn.test", "evilcdn.test"):
        net.names[name] = ["127.0.0.1"]
    port = http_server.server_port
    names_only = UrlPolicy(allowlist=parse_allowlist("images.test,*.cdn.test"))
    for url in (f"http://images.test:{port}/cat.png", f"http://A.CDN.test:{port}/cat.png", f"http://cdn.test:{port}/",
                f"http://evilcdn.test:{port}/"):
        with pytest.raises(UrlNotAllowed, match="non-public address"):
            fetch_image(url, names_only)
    with pytest.raises(UrlNotAllowed, match="loopback"):
        fetch_image(f"http://127.0.0.1:{port}/", names_only)
    assert net.connects == []
    with_network = UrlPolicy(allowlist=parse_allowlist("images.test,*.cdn.test,127.0.0.0/8"))
    assert fetch_image(f"http://images.test:{port}/cat.png", with_network) == IMAGE
    assert fetch_image(f"http://A.CDN.test:{port}/cat.png", with_network) == IMAGE


def test_redirects_followed_up_to_the_limit(base: str, http_server) -> None:
    assert fetch_image(f"{base}/hop/3", LOOPBACK) == IMAGE
    assert [s["path"] for s in http_server.seen] == ["/hop/3", "/hop/2", "/hop/1", "/hop/0"]
    with pytest.raises(UrlFetchFailed, match="more than 3 redirects"):
        fetch_image(f"{base}/hop/4", LOOPBACK)
    with pytest.raises(UrlFetchFailed, match="more than 0 redirects"):
        fetch_image(f"{base}/hop/1", UrlPolicy(allowlist=("127.0.0.0/8",), max_redirects=0))


def test_redirect_does_not_carry_cookies(base: str, http_server) -> None:
    assert fetch_image(f"{base}/cookie", LOOPBACK) == IMAGE
    assert "Cookie" not in http_server.seen[-1]["headers"]


@pytest.mark.parametrize("target", [
    "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://internal.test/", "file:///etc/passwd",
    "http://[::ffff:10.0.0.1]/", "http://167772161/", "http://user:pw@127.0.0.1/", "gopher://127.0.0.1/"])
def test_redirect_to_refused_address_is_refused_before_connecting(target: str, base: str, net: Net) -> None:
    net.names["internal.test"] = ["10.1.2.3"]
    with pytest.raises(UrlNotAllowed):
        fetch_image(f"{base}/to?u={target}", LOOPBACK)
    assert net.connects == ["127.0.0.1"]  # only the first hop, to the local server


def test_redirect_without_location_fails(base: str) -> None:
    with pytest.raises(UrlFetchFailed, match="HTTP 302"):
        fetch_image(f"{base}/no-location", LOOPBACK)


def test_http_error_status_fails_with_host_and_status(base: str) -> None:
    with pytest.raises(UrlFetchFailed, match=r"'127\.0\.0\.1' answered HTTP 404") as info:
        fetch_image(f"{base}/missing", LOOPBACK)
    assert "not here" not in str(info.value)  # the body is never echoed


@pytest.mark.parametrize("query", ["n=4097&length=1", "n=100000&length=0", "chunked"])
def test_bodies_over_max_bytes_are_refused(query: str, base: str) -> None:
    url = f"{base}/chunked" if query == "chunked" else f"{base}/size?{query}"
    with pytest.raises(UrlTooLarge, match="larger than 4096 bytes"):
        fetch_image(url, LOOPBACK)


def test_announced_content_length_over_max_bytes_is_refused_before_reading(base: str) -> None:
    started = time.monotonic()
    with pytest.raises(UrlTooLarge, match="larger than 4096 bytes"):
        fetch_image(f"{base}/announce", LOOPBACK)
    assert time.monotonic() - started < 0.5  # did not wait for the stalled body


@pytest.mark.parametrize("length", ["0", "1"])
def test_body_of_exactly_max_bytes_is_accepted(length: str, base: str) -> None:
    assert fetch_image(f"{base}/size?n=4096&length={length}", LOOPBACK) == b"x" * 4096


def test_truncated_body_and_compressed_answers_fail(base: str) -> None:
    with pytest.raises(UrlFetchFailed, match="ended before its Content-Length"):
        fetch_image(f"{base}/short", LOOPBACK)
    with pytest.raises(UrlFetchFailed, match="identity"):
        fetch_image(f"{base}/gzip", LOOPBACK)


@pytest.mark.parametrize("path", ["/slow", "/slow-headers"])
def test_slow_drip_hits_the_total_deadline(path: str, base: str) -> None:
    """Each byte arrives well within any per-read timeout; the 0.5 s total still stops it."""
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="timed out after 0.5 s"):
        fetch_image(f"{base}{path}", UrlPolicy(allowlist=("127.0.0.0/8",), timeout_s=0.5))
    assert time.monotonic() - started < 1.5


def test_connection_refused_fails_cleanly() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(UrlFetchFailed, match="ConnectionRefusedError"):
        fetch_image(f"http://127.0.0.1:{port}/", LOOPBACK)


def test_proxy_environment_is_ignored(base: str, monkeypatch, net: Net) -> None:
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.setenv(name, "http://10.9.9.9:3128")
    assert fetch_image(f"{base}/cat.png", LOOPBACK) == IMAGE
    assert net.connects == ["127.0.0.1"]


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                    "/CN=pinned.test", "-addext", "subjectAltName=DNS:pinned.test", "-keyout", str(key),
                    "-out", str(cert)], check=True, capture_output=True)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    srv = start(context)
    yield srv, cert
    srv.shutdown()
    srv.server_close()


def test_https_pins_ip_and_verifies_certificate_for_the_url_host(tls_server, net: Net, monkeypatch) -> None:
    srv, cert = tls_server
    monkeypatch.setattr(urlfetch, "_tls_context", lambda: ssl.create_default_context(cafile=str(cert)))
    net.names["pinned.test"] = ["127.0.0.1"]
    net.names["other.test"] = ["127.0.0.1"]
    port = srv.server_port
    assert fetch_image(f"https://pinned.test:{port}/host", LOOPBACK) == f"pinned.test:{port}".encode()
    for host in ("other.test", "127.0.0.1"):  # same socket address, wrong name: the certificate check refuses
        with pytest.raises(UrlFetchFailed, match="TLS certificate"):
            fetch_image(f"https://{host}:{port}/host", LOOPBACK)
