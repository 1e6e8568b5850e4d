"""The model catalog in Redis: which model versions exist, how to feed them, and how they are doing.

Workers announce each version they serve (LOADING, then READY, or UNAVAILABLE with a reason) and
withdraw it when its folder is removed. A version counts as READY for routing only while it has
live workers (heartbeats), so a crashed process never leaves a version that looks servable.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import redis

from image_gateway.protocol.keys import catalog_key

LOADING, READY, UNAVAILABLE = "LOADING", "READY", "UNAVAILABLE"


@dataclass(frozen=True)
class Entry:
    name: str
    version: str
    kind: str
    input_size: int
    crop_fraction: float
    resample: str
    state: str = LOADING            # as announced; routing also needs live workers for READY
    reason: str = ""                # why a version is UNAVAILABLE
    runtime: str = ""               # what the workers run it on: litert, onnxruntime, tensorflow or jax
    format: str = ""                # the model's file: onnx, tflite or keras (repository), builtin
    resize: str = "center_crop"     # how the web tier fits a classifier's square (models/resizing.py)
    precision: str = ""             # built-ins: fp32, or int8 for the *_int8 models; "" for repository versions

    @property
    def field(self) -> str:
        return f"{self.name}/{self.version}"


class Catalog:
    def __init__(self, client: redis.Redis, prefix: str):
        self.client = client
        self.key = catalog_key(prefix)

    def announce(self, entry: Entry) -> None:
        self.client.hset(self.key, entry.field, json.dumps(asdict(entry)))

    def withdraw(self, name: str, version: str) -> None:
        self.client.hdel(self.key, f"{name}/{version}")

    def entries(self) -> list[Entry]:
        known = {field.name for field in fields(Entry)}    # an entry from a newer worker may say more
        return [Entry(**{key: value for key, value in json.loads(raw).items() if key in known})
                for raw in self.client.hvals(self.key)]
