"""The two messages on Redis: a Job (web tier -> worker) and its Result (worker -> web tier)."""
from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field

import numpy as np

WIRE_DTYPES = ("uint8", "float32")


@dataclass
class Job:
    """One request on the queue: the preprocessed pixels plus what a worker needs to answer it."""

    id: str
    model: str
    deadline: float                 # unix time (s) after which nobody waits for the answer
    array: np.ndarray               # (H, W, 3) C-contiguous uint8 or float32
    top_k: int = 5
    trace_id: str = ""
    cache_key: str | None = None    # where to store the result for identical bytes
    attempts: int = 0               # claims by workers that died before answering
    enqueued_at: float = field(default_factory=time.time)
    version: str = "1"
    params: dict = field(default_factory=dict)   # what a model kind needs beyond pixels (a detector's scale)

    def message(self) -> bytes:
        """What waits in the queue: the JSON header line. The pixels wait apart (`pixels()`, under
        Keys.pixels): Redis runs the queue's Lua scripts on the header alone (a 150 KB argument cost a
        script 220 us, as much as everything else Redis does for the job)."""
        array = np.ascontiguousarray(self.array)
        header = json.dumps({
            "id": self.id, "model": self.model, "deadline": self.deadline, "top_k": self.top_k,
            "trace_id": self.trace_id, "cache_key": self.cache_key, "attempts": self.attempts,
            "enqueued_at": self.enqueued_at, "version": self.version, "params": self.params,
            "dtype": array.dtype.name, "shape": list(array.shape),
        })
        return header.encode() + b"\n"

    def pixels(self) -> memoryview:
        """The array's bytes, C order, as one flat view (its len() is its size in bytes)."""
        return np.ascontiguousarray(self.array).data.cast("B")

    def encode(self) -> bytes:
        """The header line with the pixels after it, in one message (decode reads both forms)."""
        return self.message() + self.pixels().tobytes()

    @classmethod
    def decode(cls, raw: bytes, pixels: bytes | None = None) -> Job:
        """The Job of a queue message and its pixels (None: the pixels follow the header in `raw`)."""
        message, body_at = read_header(raw)
        if message["dtype"] not in WIRE_DTYPES:
            raise ValueError(f"dtype {message['dtype']!r} is not a wire dtype")
        data, offset = (raw, body_at) if pixels is None else (pixels, 0)
        shape = message["shape"]
        if (len(data) - offset) != int(np.prod(shape)) * np.dtype(message["dtype"]).itemsize:
            raise ValueError(f"the job's pixels are missing or cut short ({len(data) - offset} bytes for {shape})")
        array = np.frombuffer(data, dtype=message["dtype"], offset=offset)
        return cls(
            id=message["id"], model=message["model"], deadline=message["deadline"],
            array=array.reshape(shape), top_k=message["top_k"],
            trace_id=message.get("trace_id", ""), cache_key=message.get("cache_key"),
            attempts=message.get("attempts", 0), enqueued_at=message.get("enqueued_at", 0.0),
            version=str(message.get("version", "1")), params=message.get("params") or {},
        )


def new_job_id() -> str:
    return str(uuid.uuid4())


def read_header(raw: bytes) -> tuple[dict, int]:
    """A message's JSON header and where its array bytes start."""
    end = raw.index(b"\n")
    return json.loads(raw[:end]), end + 1


def peek_id(raw: bytes) -> str | None:
    """The id of a message that may not decode fully (for answering it with an error)."""
    try:
        return read_header(raw)[0]["id"]
    except (ValueError, KeyError, TypeError):
        return None


def to_wire(array: np.ndarray, dtype: str) -> np.ndarray:
    """The array as it travels on the queue: uint8 as decoded, or the card's float32."""
    return array if dtype == "uint8" else np.ascontiguousarray(array, dtype=np.float32)


def is_expired(job: Job, now: float) -> bool:
    """Nobody waits for a job past its deadline."""
    return job.deadline < now


@dataclass(frozen=True)
class Result:
    """The one answer message, from a worker (or the dead-letter path) to the waiting handler.

    On the wire: ``{"id", "success": true, **output}`` or ``{"id", "success": false, "error": {code,
    message}}``. `output` holds the model's answer fields, e.g. ``{"predictions": [...]}``.
    """

    id: str
    output: dict = field(default_factory=dict)
    error: dict | None = None           # {"code": <errors.py code>, "message": ...}

    @property
    def success(self) -> bool:
        return self.error is None

    @classmethod
    def ok(cls, job_id: str, **output) -> Result:
        return cls(job_id, output)

    @classmethod
    def failed(cls, job_id: str, code: str, message: str) -> Result:
        return cls(job_id, error={"code": code, "message": message})

    def encode(self) -> str:
        if self.success:
            return json.dumps({"id": self.id, "success": True, **self.output})
        return json.dumps({"id": self.id, "success": False, "error": self.error})

    @classmethod
    def decode(cls, raw: bytes | str) -> Result:
        message = json.loads(raw)
        if message.pop("success"):
            return cls(message.pop("id"), message)
        return cls(message["id"], error=message["error"])


