"""The Redis URL as a secret: read it from REDIS_URL_FILE, and show it only without its password.

A URL can carry `user:password@`; whatever logs, prints or serves a Redis address passes it through
`redact` (or shows `address`, host:port alone). A process list never shows it: every entry point takes
it from the environment (REDIS_URL) or a file (REDIS_URL_FILE), never from its command line.
"""
from __future__ import annotations

import dataclasses
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

HIDDEN = "***"
SECRET_QUERY_KEYS = {"password", "ssl_password"}


# Clients send no CLIENT SETINFO on connect: Redis < 7.2 lacks it, and the gateway's ACL user is not
# granted CLIENT at all (deploy/users.acl), so every connection would be an ACL denial in its log.
# A fresh DriverInfo per client: redis-py propagates (and may change) the one object through its pools.
def no_setinfo() -> dict:
    """Client options that send no CLIENT SETINFO (redis-py 8's driver_info, else lib_name/lib_version)."""
    try:        # redis-py 8: lib_name/lib_version still work there but raise a DeprecationWarning
        from redis.driver_info import DriverInfo
    except ImportError:     # redis-py 5 to 7
        return {"lib_name": None, "lib_version": None}
    return {"driver_info": DriverInfo(name=None, lib_version=None)}


def redact(url: str | None) -> str:
    """`url` with its password (in the userinfo or a `password=` query field) replaced by ***."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
    except ValueError:
        return HIDDEN                         # unparsable: show nothing of it
    userinfo, at, hostinfo = parts.netloc.rpartition("@")
    netloc = parts.netloc
    if at:
        user, colon, _ = userinfo.partition(":")
        netloc = f"{user}{':' + HIDDEN if colon else ''}@{hostinfo}"
    query = parts.query
    if query:
        fields = parse_qsl(query, keep_blank_values=True)
        query = urlencode([(k, HIDDEN if k.lower() in SECRET_QUERY_KEYS else v) for k, v in fields], safe="*/")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def address(url: str | None) -> str:
    """host:port of a redis:// or rediss:// URL (a unix socket's path), with no credentials."""
    if not url:
        return ""
    try:
        parts = urlsplit(url)
        if parts.scheme == "unix":
            return parts.path
        return f"{parts.hostname or 'localhost'}:{parts.port or 6379}"
    except ValueError:
        return HIDDEN


def read_url_file(path: str) -> str:
    """The URL in the file `path` (surrounding whitespace ignored); the error names the file, never the content."""
    try:
        with open(path, encoding="utf-8") as file:
            url = file.read().strip()
    except OSError as error:
        raise ValueError(f"REDIS_URL_FILE {path}: cannot read it ({error.strerror or error})") from None
    if not url or "\n" in url:
        raise ValueError(f"REDIS_URL_FILE {path}: it must hold one Redis URL on one line")
    return url


def resolve(settings):
    """`settings` with redis_url read from REDIS_URL_FILE when REDIS_URL is unset (else unchanged)."""
    if settings.redis_url or not getattr(settings, "redis_url_file", None):
        return settings
    return dataclasses.replace(settings, redis_url=read_url_file(settings.redis_url_file))
