"""Clients: who calls, with which keys, and what serves each recognition type for them (the CLIENTS file).

    {"clients": [
      {"name": "bank", "keys_sha256": ["<hex sha256 of the key>"],
       "routes": {"scene": {"model": "toy", "version": "1"}, "faces": {"pipeline": "face_crops"}},
       "rate": 20, "burst": 20, "max_task_images": 100},
      {"name": "ads", "keys_sha256": ["<hex>"],
       "routes": {"scene": {"model": "toy", "split": {"1": 90, "2": 10}}},
       "models": ["efficientnet_lite0"]}]}

JSON, or TOML with the same fields (a `.toml` file: `[[clients]]` tables). A client without `rate` is
unlimited; `burst` (default: one second's worth of `rate`) is how many requests may come at once. A
client without `models` may use only its routes; with it, also the models and pipelines it names. API_KEY
is one more client, `default`, that may call every model. A canary `split` gives each version a weight;
which version an image gets depends on the image's bytes only, so the same image always gets the same one.

The file is re-read when it changes (checked at most every REPOSITORY_POLL_S, on use); a bad new version
is logged and the previous one stays in force. Cheap: no Flask, no Redis.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import threading
import time
import tomllib
from dataclasses import dataclass, field

log = logging.getLogger("gateway.clients")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")      # client and type names (Redis keys, metric labels)
VERSION = re.compile(r"^[1-9][0-9]{0,8}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")
CLIENT_FIELDS = {"name", "keys_sha256", "routes", "rate", "burst", "max_task_images", "models"}
ROUTE_FIELDS = {"model", "version", "pipeline", "split"}
DEFAULT, ANONYMOUS_NAME = "default", "anonymous"


@dataclass(frozen=True)
class Route:
    """What serves one recognition type: a model (pinned, split over versions, or its newest) or a pipeline."""
    model: str | None = None
    version: str | None = None
    pipeline: str | None = None
    split: tuple[tuple[str, int], ...] = ()        # (version, weight), versions in ascending order

    def version_for(self, data: bytes) -> str | None:
        """The version this image goes to: the pinned one, its canary bucket's, or None (the newest)."""
        return assign(self.model or "", self.split, data) if self.split else self.version

    def describe(self) -> dict:
        if self.pipeline:
            return {"pipeline": self.pipeline}
        pin = {"split": dict(self.split)} if self.split else {"version": self.version} if self.version else {}
        return {"model": self.model, **pin}

    def target(self) -> str:
        """How a task unit names it: pipeline:<name>, <model>, <model>@<version> or <model>@<v>:<w>,<v>:<w>."""
        if self.pipeline:
            return f"pipeline:{self.pipeline}"
        if self.split:
            return f"{self.model}@" + ",".join(f"{version}:{weight}" for version, weight in self.split)
        return f"{self.model}@{self.version}" if self.version else str(self.model)

    @classmethod
    def from_target(cls, target: str) -> Route:
        """The route a task unit's model target names (the inverse of `target` for models)."""
        model, _, pin = target.partition("@")
        if ":" not in pin:
            return cls(model, pin or None)
        return cls(model, split=tuple((v, int(w)) for v, w in (part.split(":") for part in pin.split(","))))


def assign(salt: str, split: tuple[tuple[str, int], ...], data: bytes) -> str:
    """The canary version of an image: a bucket from a hash of its bytes (salted with the model's name),
    mapped over the cumulative weights. Pure: the same bytes always land in the same version."""
    digest = hashlib.blake2b(data, digest_size=8, key=salt.encode()[:64]).digest()
    bucket = int.from_bytes(digest, "big") % sum(weight for _, weight in split)
    for version, weight in split:
        if bucket < weight:
            return version
        bucket -= weight
    return split[-1][0]       # unreachable: the buckets cover the total


@dataclass(frozen=True)
class Client:
    name: str
    keys_sha256: frozenset[str] = frozenset()
    routes: dict[str, Route] = field(default_factory=dict)
    rate: float | None = None                 # requests per second; None: unlimited
    burst: int | None = None                  # requests at once (default: one second's worth of rate)
    max_task_images: int | None = None        # images x targets of one task (besides MAX_TASK_IMAGES)
    models: frozenset[str] | None = None      # models and pipelines it may name directly; None: every one

    def may_call(self, name: str) -> bool:
        return self.models is None or name in self.models

    @property
    def bucket(self) -> int:
        return self.burst or max(1, round(self.rate or 1))

    def describe(self) -> dict:
        return {"client": self.name, "routes": {kind: route.describe() for kind, route in sorted(self.routes.items())},
                "models": None if self.models is None else sorted(self.models), "rate": self.rate,
                "burst": self.bucket if self.rate else None, "max_task_images": self.max_task_images}


ANONYMOUS = Client(ANONYMOUS_NAME)           # no API_KEY and no CLIENTS: everyone, every model


@dataclass(frozen=True)
class Book:
    """One version of the clients: by name, and by the SHA-256 of each key."""
    clients: dict[str, Client]
    by_hash: dict[str, Client]

    def by_key(self, key: str) -> Client | None:
        """The client holding `key` (its hash found, then compared in constant time), else None."""
        if not key:
            return None
        digest = hashlib.sha256(key.encode()).hexdigest()
        found = self.by_hash.get(digest)
        if found is None or not any(hmac.compare_digest(digest, known) for known in found.keys_sha256):
            return None
        return found


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse_document(text: str, toml: bool) -> list[Client]:
    """The clients of a CLIENTS file's text; ValueError names the first thing wrong."""
    try:
        document = tomllib.loads(text) if toml else json.loads(text)
    except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not valid {'TOML' if toml else 'JSON'}: {exc}") from None
    if not isinstance(document, dict) or not isinstance(document.get("clients"), list):
        raise ValueError('the file must hold {"clients": [...]}')
    return [parse_client(entry, index) for index, entry in enumerate(document["clients"])]


def parse_client(entry, index: int) -> Client:
    if not isinstance(entry, dict):
        raise ValueError(f"clients[{index}] must be an object")
    name = entry.get("name")
    if not isinstance(name, str) or not NAME.match(name):
        raise ValueError(f"clients[{index}]: `name` must be 1-64 of A-Z a-z 0-9 _ . - (not starting with . _ -)")
    where = f"client {name!r}"
    unknown = set(entry) - CLIENT_FIELDS
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    hashes = entry.get("keys_sha256", [])
    if not isinstance(hashes, list) or not all(isinstance(h, str) and SHA256.match(h.lower()) for h in hashes):
        raise ValueError(f"{where}: `keys_sha256` must be a list of 64-hex-digit SHA-256 hashes")
    routes = entry.get("routes", {})
    if not isinstance(routes, dict):
        raise ValueError(f"{where}: `routes` must map types to targets")
    models = entry.get("models")
    if models is not None and (not isinstance(models, list) or not all(isinstance(m, str) for m in models)):
        raise ValueError(f"{where}: `models` must be a list of model or pipeline names")
    return Client(name, frozenset(h.lower() for h in hashes),
                  {kind: parse_route(kind, target, where) for kind, target in routes.items()},
                  number(entry, "rate", where, float), number(entry, "burst", where, int),
                  number(entry, "max_task_images", where, int), frozenset(models or ()))   # none: routes only


def number(entry: dict, name: str, where: str, kind: type) -> float | int | None:
    value = entry.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0 or \
            (kind is int and value != int(value)):
        raise ValueError(f"{where}: `{name}` must be a positive {'integer' if kind is int else 'number'}")
    return kind(value)


def parse_route(kind: str, target, where: str) -> Route:
    where = f"{where}, type {kind!r}"
    if not NAME.match(kind):
        raise ValueError(f"{where}: a type is 1-64 of A-Z a-z 0-9 _ . -")
    if not isinstance(target, dict) or set(target) - ROUTE_FIELDS:
        raise ValueError(f"{where}: a target is {{\"model\", optional \"version\" or \"split\"}} or {{\"pipeline\"}}")
    model, pipeline = target.get("model"), target.get("pipeline")
    if (model is None) == (pipeline is None) or not isinstance(model or pipeline, str):
        raise ValueError(f"{where}: name exactly one of `model` and `pipeline`")
    if pipeline is not None:
        if set(target) != {"pipeline"}:
            raise ValueError(f"{where}: a pipeline target takes no `version` or `split`")
        return Route(pipeline=pipeline)
    version, split = target.get("version"), target.get("split")
    if version is not None and split is not None:
        raise ValueError(f"{where}: give `version` or `split`, not both")
    if version is not None and not VERSION.match(str(version)):
        raise ValueError(f"{where}: `version` must be a positive integer")
    return Route(model, None if version is None else str(version), split=parse_split(split, where))


def parse_split(split, where: str) -> tuple[tuple[str, int], ...]:
    if split is None:
        return ()
    if not isinstance(split, dict) or not split or not all(VERSION.match(str(v)) for v in split):
        raise ValueError(f"{where}: `split` maps versions (positive integers) to weights")
    weights = list(split.values())
    if any(isinstance(w, bool) or not isinstance(w, int) or w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"{where}: `split` weights are non-negative integers, not all zero")
    return tuple(sorted(((str(v), w) for v, w in split.items() if w > 0), key=lambda item: int(item[0])))


def build_book(clients: list[Client], api_key: str | None) -> Book:
    """The clients by name and key hash, API_KEY as `default`; ValueError on a name or hash used twice."""
    if api_key:
        clients = [Client(DEFAULT, frozenset({key_hash(api_key)})), *clients]
    by_name: dict[str, Client] = {}
    by_hash: dict[str, Client] = {}
    for client in clients:
        if client.name in by_name or client.name == ANONYMOUS_NAME:
            taken = "is reserved" if client.name == ANONYMOUS_NAME else \
                "is API_KEY's client" if client.name == DEFAULT and api_key else "is used twice"
            raise ValueError(f"client name {client.name!r} {taken}")
        for digest in client.keys_sha256:
            if digest in by_hash:
                raise ValueError(f"a key hash of client {client.name!r} is also {by_hash[digest].name!r}'s")
            by_hash[digest] = client
        by_name[client.name] = client
    return Book(by_name, by_hash)


def read_book(path: str | None, api_key: str | None) -> Book:
    """The book of the CLIENTS file at `path` (none: only API_KEY's client); ValueError names the file."""
    if not path:
        return build_book([], api_key)
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
        return build_book(parse_document(text, path.endswith(".toml")), api_key)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"CLIENTS file {path}: {exc}") from None


def signature(path: str) -> tuple:
    """Changes when the file is written or replaced."""
    status = os.stat(path)
    return status.st_ino, status.st_mtime_ns, status.st_size


class ClientRegistry:
    """The clients now in force; `current()` re-reads the file when it changed (at most every poll_s)."""

    def __init__(self, path: str | None, api_key: str | None, poll_s: float):
        self.path, self.api_key, self.poll_s = path, api_key, poll_s
        self.signature = signature(path) if path and os.path.exists(path) else None
        self.book = read_book(path, api_key)            # a bad file stops the start, naming what is wrong
        self.checked = time.monotonic()
        self.lock = threading.Lock()

    @property
    def required(self) -> bool:
        """Whether a request needs a key (API_KEY or CLIENTS set)."""
        return bool(self.path or self.api_key)

    def current(self) -> Book:
        """The clients in force; a change to the file is seen within poll_s (a due check is made by the first
        caller, the others wait for it: a few file reads, no request sees the old clients after it)."""
        if self.path and time.monotonic() - self.checked >= self.poll_s:
            with self.lock:
                if time.monotonic() - self.checked >= self.poll_s:
                    self.reload()
        return self.book

    def reload(self) -> None:
        """Take the file's new version if it parses; otherwise log why and keep the one in force."""
        self.checked = time.monotonic()
        try:
            now = signature(self.path)
        except OSError as exc:
            if self.signature is not None:
                log.warning("CLIENTS file %s unreadable (%s): the previous clients stay in force", self.path, exc)
                self.signature = None
            return
        if now == self.signature:
            return
        self.signature = now
        try:
            book = read_book(self.path, self.api_key)
        except ValueError as exc:
            log.warning("%s: the previous clients stay in force", exc)
            return
        self.book = book
        log.info("CLIENTS file %s reloaded: %d clients", self.path, len(book.clients))
