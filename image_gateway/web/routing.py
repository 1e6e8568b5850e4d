"""Which model version a request goes to.

The web tier knows the configured built-ins (MODELS, MODEL) itself and learns every other version
from the catalog the workers announce in Redis, so every web server routes alike. Its view is reused
for CATALOG_REFRESH_S. A request without a version goes to the newest READY version (one with live
workers), else to the newest version that did not fail to load.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import redis

from image_gateway import errors, models, protocol
from image_gateway import settings as settings_module
from image_gateway.errors import GatewayError
from image_gateway.models.repository import VERSION
from image_gateway.protocol.catalog import LOADING, READY, UNAVAILABLE
from image_gateway.settings import Settings

NO_WORKER = "no live worker"   # the reason of a version whose workers all stopped heartbeating


@dataclass(frozen=True)
class Served:
    """One model version as the web tier sees it."""

    name: str
    version: str
    spec: models.ModelSpec          # geometry only: the web tier never needs labels
    queue: protocol.JobQueue
    state: str
    reason: str
    live_workers: int
    runtime: str = ""
    format: str = ""                # onnx, tflite, keras or builtin
    precision: str = ""             # built-ins: fp32 or int8; repository versions: not known

    def describe(self) -> dict:
        body = {"version": self.version, "state": self.state, "live_workers": self.live_workers}
        extra = {"reason": self.reason, "format": self.format, "runtime": self.runtime, "precision": self.precision}
        return {**body, **{key: value for key, value in extra.items() if value}}


class Router:
    def __init__(self, config: Settings, client):
        self.config = config
        self.client = client
        self.catalog = protocol.Catalog(client, config.key_prefix)
        self.builtins = local_specs(config)
        self.default = self.builtins.get(config.model, None)
        self.default_name = self.default.name if self.default else config.model
        self.queues: dict[tuple[str, str], protocol.JobQueue] = {}
        self.lock = threading.Lock()
        self._view: dict[str, dict[str, Served]] = {}
        self._view_at = float("-inf")

    def queue(self, name: str, version: str) -> protocol.JobQueue:
        with self.lock:
            if (name, version) not in self.queues:
                self.queues[(name, version)] = protocol.JobQueue(self.client, name, self.config.key_prefix, version)
            return self.queues[(name, version)]

    def view(self) -> dict[str, dict[str, Served]]:
        """name -> version -> Served, rebuilt at most every CATALOG_REFRESH_S."""
        if time.monotonic() - self._view_at > self.config.catalog_refresh_s:
            self._view, self._view_at = self._build_view(), time.monotonic()
        return self._view

    def _build_view(self) -> dict[str, dict[str, Served]]:
        announced = {(spec.name, "1"): (spec, LOADING, "", "", "builtin") for spec in self.builtins.values()}
        for entry in self.catalog.entries():
            spec = models.ModelSpec(entry.name, entry.input_size, entry.crop_fraction, entry.resample, (), entry.kind,
                                    entry.resize, entry.precision)
            announced[(entry.name, entry.version)] = (spec, entry.state, entry.reason, entry.runtime, entry.format)
        view: dict[str, dict[str, Served]] = {}
        for (name, version), (spec, state, reason, runtime, file_format) in announced.items():
            queue = self.queue(name, version)
            try:
                live = len(queue.live_workers(self.config.heartbeat_ttl))
            except redis.RedisError:     # its shard is failing over: keep what was known, others go on
                previous = self._view.get(name, {}).get(version)
                if previous:
                    view.setdefault(name, {})[version] = previous
                continue
            if live:
                state, reason = READY, ""
            elif state == READY:
                state, reason = UNAVAILABLE, NO_WORKER
            view.setdefault(name, {})[version] = Served(name, version, spec, queue, state, reason, live, runtime,
                                                        file_format, spec.precision)
        return view

    def resolve(self, name: str | None, version: str | None) -> Served:
        """The version a request names, or the newest ready one; 404/503 errors otherwise."""
        name = name or self.default_name
        versions = self.versions_of(name)
        if version is not None and (not VERSION.match(str(version)) or str(version) not in versions):
            known = ", ".join(sorted(versions, key=int))
            raise GatewayError(errors.MODEL_VERSION_NOT_FOUND, f"model {name!r} has no version {version!r}; "
                               f"versions: {known}")
        served = newest(versions) if version is None else versions[str(version)]
        if served.state == UNAVAILABLE and served.reason != NO_WORKER:     # no version of it loaded, or this one
            raise GatewayError(errors.MODEL_UNAVAILABLE, f"model {name!r} version {served.version}: {served.reason}",
                               {"Retry-After": str(self.config.retry_after)})
        return served

    def versions_of(self, name: str) -> dict[str, Served]:
        versions = self.view().get(name)
        if not versions:
            served = ", ".join(sorted(self.view())) or "none"
            raise GatewayError(errors.MODEL_NOT_FOUND, f"model {name!r} is not served; served models: {served}")
        return versions

    def describe(self, name: str) -> dict:
        versions = self.versions_of(name)
        newest_first = sorted(versions.values(), key=lambda served: -int(served.version))
        spec = newest_first[0].spec
        return {"name": name, "kind": spec.kind, "input_size": spec.input_size, "default": name == self.default_name,
                "versions": [served.describe() for served in newest_first]}


def newest(versions: dict[str, Served]) -> Served:
    """The newest READY version, else the newest one that did not fail to load, else the newest."""
    by_age = sorted(versions.values(), key=lambda served: -int(served.version))
    for accept in (lambda s: s.state == READY, lambda s: s.state == LOADING or s.reason == NO_WORKER):
        found = next((served for served in by_age if accept(served)), None)
        if found:
            return found
    return by_age[0]


def local_specs(config: Settings) -> dict[str, models.ModelSpec]:
    """Configured name -> spec of the built-ins this web server knows without the catalog."""
    specs = {}
    for name in settings_module.served_builtins(config):
        try:
            specs[name] = models.get_spec(name, labels_path=config.model_labels)
        except models.ModelNotFoundError:
            continue            # a repository model: the catalog will name it
    return specs
