"""Closed-loop load generator and the pool of distinct photos it sends.

Closed loop: C client threads, each with one keep-alive HTTP connection, send the next request as soon
as the previous answer arrived, so exactly C requests are in flight at any time. Every request body is
a distinct JPEG (random crop, flip, size, colour and quality of the photos in tests/data), built and
multipart-encoded before the measurement starts, and none is sent twice in a run, so a result cache
keyed on the bytes can never answer. The hot loop is http.client on pre-built bytes: the client must
stay cheap because it shares the CPU with the gateway it measures.
"""
from __future__ import annotations

import http.client
import io
import itertools
import json
import random
import threading
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

ROOT = Path(__file__).resolve().parent.parent
PHOTO_DIR = ROOT / "tests" / "data"
BOUNDARY = "----gateway-bench-7f3a9c2e41d8"
CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
# One part, field `image`, as `curl -F image=@photo.jpg` sends it. The head is the same for every
# body, so the JPEG always starts at len(MULTIPART_HEAD).
MULTIPART_HEAD = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"photo.jpg\"\r\n"
                  "Content-Type: image/jpeg\r\n\r\n").encode()
MULTIPART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


# ------------------------------------------------------------------------------- the photo pool
@dataclass(frozen=True)
class PhotoRecipe:
    """How distinct photos are made from the source photos."""
    short_side: tuple[int, int] = (300, 800)   # px of the shorter side of each JPEG
    quality: tuple[int, int] = (85, 92)
    crop: tuple[float, float] = (0.6, 1.0)     # fraction of each source side kept by the random crop
    jitter: float = 0.12                       # +- brightness, colour and contrast factor
    seed: int = 0


DEFAULT_RECIPE = PhotoRecipe()
_SOURCES: list[Image.Image] = []


def _source_photos(photo_dir: str) -> list[Image.Image]:
    if not _SOURCES:
        paths = sorted(Path(photo_dir).glob("*.jpg"))
        if not paths:
            raise FileNotFoundError(f"no *.jpg photos in {photo_dir}")
        _SOURCES.extend(Image.open(path).convert("RGB") for path in paths)
    return _SOURCES


def make_photo(index: int, recipe: PhotoRecipe = DEFAULT_RECIPE, photo_dir: str = str(PHOTO_DIR)) -> bytes:
    """The index-th distinct JPEG of the pool (deterministic for a seed; the index is in a comment,
    so two indices never give the same bytes)."""
    rng = random.Random(recipe.seed * 1_000_003 + index)
    photo = rng.choice(_source_photos(photo_dir))
    width, height = photo.size
    fraction_x, fraction_y = rng.uniform(*recipe.crop), rng.uniform(*recipe.crop)
    crop_w, crop_h = max(16, int(width * fraction_x)), max(16, int(height * fraction_y))
    left, top = rng.randint(0, width - crop_w), rng.randint(0, height - crop_h)
    scale = rng.randint(*recipe.short_side) / min(crop_w, crop_h)
    image = photo.resize((round(crop_w * scale), round(crop_h * scale)), Image.Resampling.BILINEAR,
                         box=(left, top, left + crop_w, top + crop_h))
    if rng.random() < 0.5:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhancer in (ImageEnhance.Brightness, ImageEnhance.Color, ImageEnhance.Contrast):
        image = enhancer(image).enhance(rng.uniform(1 - recipe.jitter, 1 + recipe.jitter))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=rng.randint(*recipe.quality), comment=f"bench {recipe.seed}:{index}")
    return buffer.getvalue()


def _make_photos(args: tuple[range, PhotoRecipe, str]) -> list[bytes]:
    indices, recipe, photo_dir = args
    return [make_photo(i, recipe, photo_dir) for i in indices]


def make_photos(start: int, count: int, recipe: PhotoRecipe = DEFAULT_RECIPE, processes: int = 1,
                photo_dir: str = str(PHOTO_DIR)) -> list[bytes]:
    """JPEGs number start .. start+count-1, built on `processes` cores (before any measurement)."""
    if count <= 0:
        return []
    if processes <= 1 or count < 64:
        return _make_photos((range(start, start + count), recipe, photo_dir))
    step = max(16, count // (processes * 4))
    chunks = [(range(i, min(i + step, start + count)), recipe, photo_dir) for i in range(start, start + count, step)]
    with ProcessPoolExecutor(processes) as pool:
        return [photo for chunk in pool.map(_make_photos, chunks) for photo in chunk]


def multipart_body(jpeg: bytes) -> bytes:
    return MULTIPART_HEAD + jpeg + MULTIPART_TAIL


class BodyPool:
    """Hands out pre-built request bodies, each exactly once per run (thread-safe).

    When the pool runs dry in the middle of a level, a body is re-used with a unique JPEG comment
    segment inserted after its SOI marker: new bytes (no cache can answer) for the same decode cost,
    at the price of one copy in the client. `marked` counts those; `extend()` between levels
    avoids them.
    """

    def __init__(self, bodies: Sequence[bytes] = ()):
        self.bodies: list[bytes] = list(bodies)
        self._next = itertools.count()
        self.taken = 0
        self.marked = 0
        self._lock = threading.Lock()

    @classmethod
    def from_jpegs(cls, jpegs: Sequence[bytes]) -> BodyPool:
        return cls([multipart_body(jpeg) for jpeg in jpegs])

    def extend_jpegs(self, jpegs: Sequence[bytes]) -> None:
        """Add bodies (call between levels, never while clients run)."""
        self.bodies.extend(multipart_body(jpeg) for jpeg in jpegs)

    def remaining(self) -> int:
        return max(0, len(self.bodies) - self.taken)

    def jpeg(self, index: int) -> bytes:
        return self.bodies[index][len(MULTIPART_HEAD):-len(MULTIPART_TAIL)]

    def take(self) -> bytes:
        index = next(self._next)            # atomic under the GIL: no two clients get one index
        with self._lock:
            self.taken = max(self.taken, index + 1)
        if index < len(self.bodies):
            return self.bodies[index]
        with self._lock:
            self.marked += 1
        body = self.bodies[index % len(self.bodies)]
        comment = f"bench-reuse {index}".encode()
        segment = b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment
        split = len(MULTIPART_HEAD) + 2    # just after the JPEG's SOI marker
        return body[:split] + segment + body[split:]


# ------------------------------------------------------------------------------ the load itself
@dataclass
class Outcome:
    done: float          # perf_counter() when the answer was read
    latency_s: float
    ok: bool
    error: str | None    # "503 SERVER_BUSY", "0 ConnectionResetError", ...


@dataclass
class LevelResult:
    concurrency: int
    window_s: float
    outcomes_in_window: list[Outcome]
    sent_total: int                      # every request of the level, warm-up and drain included
    errors_total: dict[str, int]         # ditto, by "status CODE"
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """images/s and latency percentiles of the successful answers inside the window."""
        latencies_ms = np.array([o.latency_s * 1000 for o in self.outcomes_in_window if o.ok])
        errors: dict[str, int] = {}
        for outcome in self.outcomes_in_window:
            if not outcome.ok:
                errors[outcome.error] = errors.get(outcome.error, 0) + 1

        def percentile(q: float) -> float | None:
            return round(float(np.percentile(latencies_ms, q)), 2) if latencies_ms.size else None

        return {
            "concurrency": self.concurrency,
            "images_per_s": round(latencies_ms.size / self.window_s, 2) if self.window_s > 0 else 0.0,
            "ok": int(latencies_ms.size), "errors": sum(errors.values()), "errors_by_code": errors,
            "p50_ms": percentile(50), "p90_ms": percentile(90), "p99_ms": percentile(99),
            "mean_ms": round(float(latencies_ms.mean()), 2) if latencies_ms.size else None,
            "max_ms": round(float(latencies_ms.max()), 2) if latencies_ms.size else None,
            "window_s": round(self.window_s, 3), "sent_total": self.sent_total,
            "errors_total": sum(self.errors_total.values()), **self.extra,
        }


def classify_answer(status: int, data: bytes) -> str | None:
    """None for the contract's success, else "status CODE" for the error counters."""
    try:
        body = json.loads(data)
    except ValueError:
        return f"{status} NOT_JSON"
    if status == 200 and isinstance(body, dict) and body.get("success") is True and body.get("predictions"):
        return None
    code = body.get("error", {}).get("code") if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
    return f"{status} {code or 'NO_CODE'}"


class LoadGenerator:
    """POSTs pool bodies to URL/predict from closed-loop client threads."""

    def __init__(self, url: str, pool: BodyPool, timeout_s: float = 30.0, path: str = "/predict"):
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "") or not parsed.hostname:
            raise ValueError(f"an http:// URL is needed, got {url!r}")
        self.host, self.port = parsed.hostname, parsed.port or 80
        self.path = (parsed.path.rstrip("/") or "") + path
        self.pool = pool
        self.timeout_s = timeout_s
        self.headers = {"Content-Type": CONTENT_TYPE, "Connection": "keep-alive"}

    def run_level(self, concurrency: int, duration_s: float, warmup_s: float = 0.0,
                  on_window: Callable[[str], None] | None = None) -> LevelResult:
        """Run C clients for warm-up + duration; count only answers that arrive inside the window.

        `on_window("start")` / `on_window("end")` run right at the window's edges (the caller reads
        the gateway's CPU counters there). Returns once every request in flight has been answered.
        """
        stop = threading.Event()
        per_client: list[list[Outcome]] = [[] for _ in range(concurrency)]
        threads = [threading.Thread(target=self._client, args=(stop, outcomes), daemon=True,
                                    name=f"bench-client-{i}") for i, outcomes in enumerate(per_client)]
        for thread in threads:
            thread.start()
        time.sleep(warmup_s)
        if on_window:
            on_window("start")
        window_start = time.perf_counter()
        time.sleep(duration_s)
        window_end = time.perf_counter()
        if on_window:
            on_window("end")
        stop.set()
        for thread in threads:
            thread.join(self.timeout_s + 5)
        outcomes = [o for client in per_client for o in client]
        errors_total: dict[str, int] = {}
        for outcome in outcomes:
            if not outcome.ok:
                errors_total[outcome.error] = errors_total.get(outcome.error, 0) + 1
        return LevelResult(concurrency, window_end - window_start,
                           [o for o in outcomes if window_start <= o.done <= window_end],
                           len(outcomes), errors_total)

    def _client(self, stop: threading.Event, outcomes: list[Outcome]) -> None:
        connection: http.client.HTTPConnection | None = None
        while not stop.is_set():
            body = self.pool.take()
            started = time.perf_counter()
            try:
                if connection is None:
                    connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout_s)
                connection.request("POST", self.path, body, self.headers)
                response = connection.getresponse()
                data = response.read()
                error = classify_answer(response.status, data)
                if response.will_close:
                    connection.close()
                    connection = None
            except (OSError, http.client.HTTPException) as exc:
                error = f"0 {type(exc).__name__}"
                if connection is not None:
                    connection.close()
                connection = None
            done = time.perf_counter()
            outcomes.append(Outcome(done, done - started, error is None, error))
            if error and error.startswith("0 "):
                stop.wait(0.05)            # a refused connection must not spin the client's core
        if connection is not None:
            connection.close()
