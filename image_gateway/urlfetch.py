"""Fetch an image by URL behind a server-side request forgery (SSRF) guard, re-applied on every redirect.

Guard: http/https only, no ``user:pass@``, any port. The host is resolved ONCE (IPv4 literals in any
inet_aton spelling such as ``2130706433`` or ``0x7f.1`` are parsed locally), EVERY address is checked, and
the socket connects to a checked address while Host, TLS SNI and the certificate check keep the URL's host
name, so DNS rebinding cannot slip through. Refused unless allowlisted: loopback, private, link-local
(169.254.169.254), shared 100.64/10, multicast, reserved, unspecified, documentation ranges, IPv6
unique-local and link-local; IPv6 forms embedding IPv4 (mapped, compatible, 6to4, NAT64) are judged by it.

``URL_ALLOWLIST`` ADDS to the public internet: every public address is allowed, and the list's IP/CIDR
entries admit the internal addresses inside them besides. A host-name entry (``img.example.com``, or
``*.example.com`` for subdomains but not the apex) matches host names only, never an IP literal in any
spelling, and admits no address: a listed name must still resolve to public addresses or into a listed
network (so a name whose DNS an attacker controls, or a wildcard over such names, cannot reach loopback,
169.254.169.254 or the LAN). To fetch from an internal host, list its address or network. Loopback stays
refused unless a CIDR entry lists it.

One deadline covers connect, TLS, headers and body; the size cap holds while streaming; identity encoding
only; no cookies, no proxies. Errors name the host and the reason, never the body, and never what a
host name resolved to (an IP literal's own kind of address is named: the client sent it).
"""
from __future__ import annotations

import contextlib
import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urljoin, urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_HOST_RE = re.compile(r"[a-z0-9_.\-]+|[0-9a-f:.]+")
_ENTRY_RE = re.compile(r"(\*\.)?[a-z0-9_\-]+(\.[a-z0-9_\-]+)*")
_BLOCKED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "100.64.0.0/10", "192.0.0.0/24", "192.0.2.0/24", "198.18.0.0/15", "198.51.100.0/24",
    "203.0.113.0/24", "224.0.0.0/3", "100::/64", "2001::/23", "2001:db8::/32",
    "64:ff9b:1::/48", "fc00::/7", "fe80::/10", "fec0::/10", "ff00::/8"))
_CHUNK = 64 * 1024
_SAFE = "/%:@!$&'()*+,;=-._~"  # characters kept as they are in path and query
_tls_context = ssl.create_default_context  # verifies the certificate and host name (tests swap in a test CA)
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "Connection": "close", "User-Agent": "gateway-urlfetch"}


class UrlNotAllowed(Exception):
    """The guard refuses the URL (error code URL_NOT_ALLOWED)."""


class UrlFetchFailed(Exception):
    """The fetch failed: network, timeout, HTTP status, size (error code URL_FETCH_FAILED)."""


class UrlTooLarge(UrlFetchFailed):
    """The body is larger than ``max_bytes`` (a UrlFetchFailed; the web tier may answer 413)."""


@dataclass(frozen=True)
class UrlPolicy:
    """What a fetch may reach and how much it may take."""
    allowlist: tuple[str, ...] = ()
    timeout_s: float = 5.0
    max_bytes: int = 10 * 1024 * 1024
    max_redirects: int = 3


@dataclass(frozen=True)
class _Target:
    scheme: str
    host: str
    port: int
    path: str
    addrs: tuple[IPAddress, ...]


def parse_allowlist(raw: str) -> tuple[str, ...]:
    """Parse ``URL_ALLOWLIST`` (comma-separated hosts, ``*.`` wildcards, IPs, CIDRs); ValueError if invalid,
    including an address in an odd spelling (``127.1``, ``2130706433``): it would be neither a name nor a
    network, so it is refused rather than silently never matching."""
    entries = []
    for item in (part.strip().lower().rstrip(".") for part in raw.split(",")):
        if not item:
            continue
        try:
            entries.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            if "/" in item or not _ENTRY_RE.fullmatch(item):
                raise ValueError(f"URL_ALLOWLIST entry {item!r} is neither a host name nor a CIDR") from None
            if _literal(item) is not None:
                raise ValueError(f"URL_ALLOWLIST entry {item!r} is an IP address in an odd spelling; "
                                 f"write it as {_literal(item)}") from None
            entries.append(item)
    return tuple(entries)


def _literal(host: str) -> IPAddress | None:
    """The address an IP-literal host means (IPv4 in any inet_aton spelling: ``2130706433``, ``0x7f.1``), or
    None for a host name."""
    with contextlib.suppress(OSError, ValueError):
        return ipaddress.IPv6Address(host) if ":" in host else ipaddress.IPv4Address(socket.inet_aton(host))
    return None


def _name_listed(host: str, entries: tuple[str, ...]) -> bool:
    """Whether host name `host` matches a name entry (``*.example.com``: a subdomain, not the apex)."""
    return any(e == host or (e.startswith("*.") and host.endswith(e[1:])) for e in entries if "/" not in e)


def _embedded_ipv4(ip: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address inside a mapped, translated, compatible, NAT64 or 6to4 IPv6 address."""
    if ip.version == 6 and (ip.ipv4_mapped or ip.sixtofour):  # address objects are always truthy
        return ip.ipv4_mapped or ip.sixtofour
    high = int(ip) >> 32
    if ip.version == 6 and ((high in (0, 0xFFFF0000) and int(ip) > 1) or high == 0x64FF9B << 64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def _refusal_reason(ip: IPAddress) -> str | None:
    """Why ``ip`` may not be fetched without an allowlist entry, or None for a public address."""
    if (inner := _embedded_ipv4(ip)) is not None:
        return _refusal_reason(inner)
    for name in ("unspecified", "loopback", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{name}"):
            return f"{name.replace('_', '-')} address"
    if not ip.is_global or any(ip.version == net.version and ip in net for net in _BLOCKED):
        return "non-public address"
    return None


def _admitted(host: str, addrs: tuple[IPAddress, ...], allowlist: tuple[str, ...]) -> None:
    """The guard's decision: raise UrlNotAllowed unless every address of `host` is public or inside a listed
    network. Name entries admit no address; for a host name the message says neither the address nor its
    kind (only that it is not public), so the guard cannot be used to map internal names."""
    entries = parse_allowlist(",".join(allowlist))
    nets = [ipaddress.ip_network(e) for e in entries if "/" in e]
    for ip in addrs:
        forms = [f for f in (ip, _embedded_ipv4(ip)) if f is not None]
        if any(f.version == n.version and f in n for f in forms for n in nets):
            continue
        if (reason := _refusal_reason(ip)) is None:
            continue
        if _literal(host) is not None:
            raise UrlNotAllowed(f"host {host!r} is not allowed ({reason}; URL_ALLOWLIST can admit it)")
        listed = " (listed by name, but a name entry admits public addresses only)" \
            if _name_listed(host, entries) else ""
        raise UrlNotAllowed(f"host {host!r} is not allowed: it resolves to a non-public address{listed}; "
                            f"URL_ALLOWLIST admits an internal source by its IP or CIDR")


def _resolve(host: str, port: int) -> tuple[IPAddress, ...]:
    """Every address of host name ``host``, from ONE lookup (IP literals never get here)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise UrlFetchFailed(f"cannot resolve host {host!r}") from exc
    return tuple(dict.fromkeys(ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos))


def _check(url: str, policy: UrlPolicy,
           resolve: Callable[[str, int], tuple[IPAddress, ...]] = _resolve) -> _Target:
    """Apply the guard to one URL and return where to connect. An IP literal (any inet_aton spelling) is
    parsed here; a host name goes to `resolve` (host, port -> addresses), once."""
    if any(ord(ch) <= 0x20 or ord(ch) == 0x7F for ch in url):
        raise UrlNotAllowed("the URL contains spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
        host = (parts.hostname or "").rstrip(".").encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise UrlNotAllowed("the URL is malformed") from exc
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UrlNotAllowed(f"scheme {scheme or '(none)'!r} is not allowed; use http or https")
    if "@" in parts.netloc:
        raise UrlNotAllowed("URLs with user:password@ credentials are not allowed")
    if not host or not _HOST_RE.fullmatch(host):
        raise UrlNotAllowed("the URL has no valid host")
    port = port if port is not None else (443 if scheme == "https" else 80)
    literal = _literal(host)
    addrs = (literal,) if literal is not None else resolve(host, port)
    _admitted(host, addrs, policy.allowlist)
    path = quote(parts.path or "/", safe=_SAFE) + (f"?{quote(parts.query, safe=_SAFE + '?')}" if parts.query else "")
    return _Target(scheme, host, port, path, addrs)


def _connect(addrs: tuple[IPAddress, ...], port: int, deadline: float) -> socket.socket:
    """A TCP connection to the first reachable checked address (no name lookup here)."""
    error = OSError("no address")
    for ip in addrs:
        sock = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(max(deadline - time.monotonic(), 0.001))
        try:
            sock.connect((str(ip), port))
            return sock
        except OSError as exc:
            sock.close()
            error = exc
    raise error


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to a checked address; Host header, SNI and certificate name stay the URL's host."""

    def __init__(self, target: _Target, deadline: float) -> None:
        super().__init__(target.host, target.port, timeout=max(deadline - time.monotonic(), 0.001))
        self.default_port = 443 if target.scheme == "https" else 80
        self._target, self._deadline = target, deadline

    def connect(self) -> None:
        self.sock = _connect(self._target.addrs, self.port, self._deadline)
        if self._target.scheme == "https":  # handshake after assignment so the watchdog can cut it short
            self.sock = _tls_context().wrap_socket(self.sock, server_hostname=self.host, do_handshake_on_connect=False)
            self.sock.do_handshake()


def _exchange(target: _Target, policy: UrlPolicy, deadline: float) -> tuple[str | None, bytes]:
    """One GET: (redirect Location or None, body). A watchdog shuts the socket down at the deadline."""
    conn = _PinnedConnection(target, deadline)
    fired = threading.Event()

    def expire() -> None:
        fired.set()
        with contextlib.suppress(OSError, TypeError):
            socket.socket.shutdown(conn.sock, socket.SHUT_RDWR)

    watchdog = threading.Timer(max(deadline - time.monotonic(), 0.0), expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        conn.request("GET", target.path, headers=_HEADERS)
        resp = conn.getresponse()
        if resp.status in _REDIRECTS and resp.getheader("Location"):
            return resp.getheader("Location"), b""
        if not 200 <= resp.status < 300:
            raise UrlFetchFailed(f"{target.host!r} answered HTTP {resp.status}")
        if resp.getheader("Content-Encoding", "identity").strip().lower() not in ("", "identity"):
            raise UrlFetchFailed(f"{target.host!r} sent a compressed answer; only identity encoding is accepted")
        too_large = UrlTooLarge(f"the image at {target.host!r} is larger than {policy.max_bytes} bytes")
        if resp.length is not None and resp.length > policy.max_bytes:
            raise too_large
        body = bytearray()
        while chunk := resp.read1(min(_CHUNK, policy.max_bytes + 1 - len(body))):  # read1: one recv per call
            body += chunk
            if len(body) > policy.max_bytes:
                raise too_large
        if fired.is_set():
            raise TimeoutError
        if resp.length:
            raise UrlFetchFailed(f"the answer from {target.host!r} ended before its Content-Length")
        return None, bytes(body)
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if fired.is_set() or isinstance(exc, TimeoutError):
            raise UrlFetchFailed(f"fetching from {target.host!r} timed out after {policy.timeout_s:g} s") from None
        if isinstance(exc, ssl.SSLCertVerificationError):
            raise UrlFetchFailed(f"TLS certificate of {target.host!r} failed verification") from None
        raise UrlFetchFailed(f"fetching from {target.host!r} failed: {type(exc).__name__}") from None
    finally:
        watchdog.cancel()
        conn.close()


def fetch_image(url: str, policy: UrlPolicy) -> bytes:
    """Fetch ``url``'s bytes under ``policy``; raises UrlNotAllowed or UrlFetchFailed (UrlTooLarge)."""
    deadline = time.monotonic() + policy.timeout_s
    for _hop in range(policy.max_redirects + 1):
        target = _check(url, policy)
        location, body = _exchange(target, policy, deadline)
        if location is None:
            return body
        url = urljoin(url, location.strip())
    raise UrlFetchFailed(f"more than {policy.max_redirects} redirects, last from {target.host!r}")
