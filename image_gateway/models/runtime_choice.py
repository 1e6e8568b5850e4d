"""Which runtime serves a built-in classifier: LiteRT (XNNPACK) or ONNX Runtime (RUNTIME=auto).

`auto` picks, per model, the faster of the two on this CPU among those that give LiteRT's answers:
1. LiteRT's file is loaded as before (converted once from Keras and checked against it within 1e-4,
   models/litert.py); it is the reference. Its ONNX twin is made once (models/onnx_builtin.py).
2. Verified: the ONNX model on the shipped check photos (each centre crop, and mirrored) must give
   LiteRT's top-5 (two classes may swap only where LiteRT's probabilities differ by at most TOLERANCE)
   and every probability within TOLERANCE (1e-4, the bar LiteRT itself met against Keras). A candidate
   that fails is rejected with the reason and cannot be chosen.
3. Measured, both at once, interleaved round by round (so drift and other load hit both alike): batch 1
   from one caller (a lone request) and BATCH_SIZE from the worker's WORKER_THREADS callers, after one
   warm-up round, for MEASURE_BUDGET_S (at least MIN_ROUNDS rounds, at most MEASURE_CAP_S). Each figure is
   the best of its samples (other processes only ever slow a sample down: the best is the runtime's own
   speed), and the score the mean of the two ms/image; ONNX Runtime replaces LiteRT only when it scores
   at least MIN_GAIN better (a tie keeps the reference).
4. The decision is cached beside the model files: `<model>-<key>.runtime-<decision key>.json`, keyed by
   both files' sha256, the CPU model and core count, the ai-edge-litert and onnxruntime versions, and
   MODEL_THREADS, WORKER_THREADS and BATCH_SIZE. A later start reads it: no conversion, no measurement.
A changed file (a corrupted ONNX twin) makes a new key, so it is verified again. Any error on the ONNX side
keeps LiteRT (and LiteRT's own failure TensorFlow, as before); the worker always starts. The int8 built-ins
exist only as LiteRT files. RUNTIME=litert or onnxruntime force one (onnxruntime falls back to LiteRT,
logged, when its file cannot be made or loaded).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from image_gateway import imaging
from image_gateway.models import litert, onnx_builtin, quantize

DECISION_FORMAT = 1
TOLERANCE = 1e-4
MEASURE_BUDGET_S = 0.6       # timed rounds after the warm-up, both runtimes together ...
MEASURE_CAP_S = 1.2          # ... and never more than this, however busy the machine (a round always ends)
MIN_ROUNDS, MAX_ROUNDS = 2, 9
ALONE_CALLS = 3              # single images per runtime per round
MIN_GAIN = 0.03              # ONNX Runtime must be this much faster to replace the reference
MEASURING = threading.Lock()
log = logging.getLogger("gateway.runtime")


@dataclass(frozen=True)
class Options:
    """What the choice depends on, from the worker's settings."""
    runtime: str = "auto"               # auto, litert or onnxruntime
    cache_dir: str = litert.DEFAULT_CACHE_DIR
    threads: int = 1                    # MODEL_THREADS (at least 1)
    callers: int = 1                    # WORKER_THREADS resolved: batches predicted at once
    batch_size: int = 8
    weights_path: str | None = None
    labels_path: str | None = None


@dataclass
class Decision:
    runtime: str
    reason: str
    measured: dict = field(default_factory=dict)     # runtime -> {"batch1_ms", "batch_ms_per_image", "score_ms"}
    rejected: dict = field(default_factory=dict)     # runtime -> why it may not be chosen
    cached: str = ""                                 # the decision file, when read from it

    def as_dict(self) -> dict:
        return {"runtime": self.runtime, "reason": self.reason, "measured": self.measured, "rejected": self.rejected}


def load_builtin(name: str, options: Options):
    """A built-in fp32 classifier on the runtime RUNTIME picks (see the module's doc); never raises for the
    ONNX side. The returned model's `runtime` says which, its `choice` why (auto)."""
    lite = litert.load_litert_model(name, options.cache_dir, options.threads, fallback=options.runtime != "litert",
                                    weights_path=options.weights_path, labels_path=options.labels_path)
    if not isinstance(lite, litert.LiteRTClassifier) or options.runtime == "litert" or lite.spec.precision == "int8":
        return lite     # TensorFlow (no LiteRT file), forced LiteRT, or int8 (exists only as LiteRT)
    if lite.model_path is None:
        log.warning("%s stays on LiteRT: its LiteRT file could not be cached, so it has no ONNX twin", name)
        return lite
    auto, decision = options.runtime == "auto", None
    try:
        onnx_file = onnx_builtin.ensure_onnx(lite.model_path)
        path = decision_path(lite.model_path, decision_key(lite.model_path, onnx_file, options)) if auto else ""
        decision = read_decision(path) if auto else None
        onnx = (None if decision and decision.runtime == lite.runtime     # a cached "litert": no session needed
                else onnx_builtin.OnnxClassifier(lite.spec, onnx_file, options.threads))
    except Exception as exc:     # conversion or load: keep the reference
        log.warning("%s: ONNX Runtime is not available (%s); serving on LiteRT", name, exc)
        return lite
    if not auto:
        log.info("%s on onnxruntime (RUNTIME=onnxruntime) from %s", name, onnx.model_path)
        return onnx
    try:
        decision = decision or decide(lite, onnx, options, path)
    except Exception as exc:     # measurement or the cache: keep the reference
        log.warning("%s: the runtime choice failed (%s); serving on LiteRT", name, exc)
        return lite
    chosen = onnx if decision.runtime == onnx_builtin.RUNTIME else lite
    chosen.choice = decision.as_dict()
    log.info("%s on %s (RUNTIME=auto): %s%s", name, decision.runtime, decision.reason,
             f" [cached decision {os.path.basename(decision.cached)}]" if decision.cached else "")
    for runtime, why in decision.rejected.items():
        log.warning("%s: %s rejected: %s", name, runtime, why)
    return chosen


def decide(lite, onnx, options: Options, path: str) -> Decision:
    """Verify the ONNX twin against LiteRT, measure both (or LiteRT alone), and cache the decision at `path`."""
    rejected, begin = {}, time.perf_counter()
    reason = verify(lite.spec, lite.predict, onnx.predict)
    if reason:
        rejected[onnx.runtime] = reason
    candidates = {lite.runtime: lite, **({} if rejected else {onnx.runtime: onnx})}
    with MEASURING:          # models loading at once (MODELS=a,b) measure one after the other
        measured = measure(candidates, options)
    decision = pick(measured, rejected)
    decision.reason += f" (verified and measured in {time.perf_counter() - begin:.2f} s)"
    try:
        litert.write_atomic(path, json.dumps({**decision.as_dict(), "machine": machine_fields(options)},
                                             indent=1).encode())
    except OSError as exc:
        log.warning("cannot cache the runtime decision at %s: %s", path, exc)
    return decision


def pick(measured: dict, rejected: dict) -> Decision:
    """LiteRT unless ONNX Runtime was verified and scored at least MIN_GAIN better."""
    lite_ms = measured["litert"]["score_ms"]
    onnx_ms = measured.get("onnxruntime", {}).get("score_ms")
    figures = ", ".join(f"{runtime} {row['batch1_ms']:.2f} ms at batch 1, {row['batch_ms_per_image']:.2f} "
                        f"ms/image at batch {row['batch_size']} x {row['callers']} callers"
                        for runtime, row in measured.items())
    if onnx_ms is not None and onnx_ms <= lite_ms * (1 - MIN_GAIN):
        return Decision("onnxruntime", f"faster: {figures}", measured, rejected)
    why = ("onnxruntime rejected" if onnx_ms is None else
           f"onnxruntime not at least {MIN_GAIN:.0%} faster")
    return Decision("litert", f"{why}: {figures}", measured, rejected)


# -- verification -----------------------------------------------------------------------------------

def check_images(spec) -> np.ndarray:
    """The shipped check photos as requests see them (centre crop), each also mirrored: (12, S, S, 3) uint8."""
    views = []
    for name in quantize.CHECK_PHOTOS:
        with Image.open(quantize.CHECK_DIR / name) as opened:
            view = imaging.fit_square(opened.convert("RGB"), spec)
        views += [view, np.ascontiguousarray(view[:, ::-1])]
    return np.stack(views)


def verify(spec, reference_predict, candidate_predict, tolerance: float = TOLERANCE) -> str:
    """Why the candidate's answers are not the reference's on the check photos ('' when they are)."""
    images = check_images(spec)
    try:
        reference = np.asarray(reference_predict(images), np.float64)
        candidate = np.asarray(candidate_predict(images), np.float64)
    except Exception as exc:    # a model that loads but cannot run
        return f"it failed on the check photos: {type(exc).__name__}: {exc}"[:300]
    if candidate.shape != reference.shape or not np.isfinite(candidate).all():
        return f"its output is {candidate.shape} with non-finite values or the wrong shape"
    for row, (want, got) in enumerate(zip(reference, candidate, strict=True)):
        photo = quantize.CHECK_PHOTOS[row // 2] + (" (mirrored)" if row % 2 else "")
        top_want, top_got = np.argsort(-want)[:5], np.argsort(-got)[:5]
        swapped = [(a, b) for a, b in zip(top_want, top_got, strict=True) if a != b]
        if any(abs(want[a] - want[b]) > tolerance for a, b in swapped):
            return (f"its top-5 on {photo} is {top_got.tolist()}, LiteRT's {top_want.tolist()}")
    difference = float(np.abs(reference - candidate).max())
    if difference > tolerance:
        return f"its probabilities differ from LiteRT's by up to {difference:.2e} (tolerance {tolerance:g})"
    return ""


# -- measurement ------------------------------------------------------------------------------------

def measure(candidates: dict, options: Options) -> dict:
    """{runtime: {"batch1_ms", "batch_ms_per_image", "score_ms", "rounds", ...}}, the runtimes interleaved."""
    size, batch_size, callers = next(iter(candidates.values())).spec.input_size, options.batch_size, options.callers
    rng = np.random.default_rng(0)
    one = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    full = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    samples = {runtime: ([], []) for runtime in candidates}
    with ThreadPoolExecutor(callers, thread_name_prefix="runtime-measure") as pool:
        def loaded(model) -> float:     # seconds per image of `callers` batches at once
            start = time.perf_counter()
            list(pool.map(lambda _: model.predict(full), range(callers)))
            return (time.perf_counter() - start) / (callers * batch_size)

        for model in candidates.values():        # warm-up: first calls, each caller's interpreter
            model.predict(one)
            loaded(model)
        begin, rounds = time.perf_counter(), 0
        while rounds < MAX_ROUNDS and not _enough(rounds, time.perf_counter() - begin):
            order = list(candidates.items())
            for runtime, model in order if rounds % 2 == 0 else order[::-1]:
                for _ in range(ALONE_CALLS):
                    start = time.perf_counter()
                    model.predict(one)
                    samples[runtime][0].append(time.perf_counter() - start)
                samples[runtime][1].append(loaded(model))
            rounds += 1
    return {runtime: _row(alone, busy, batch_size, callers, rounds) for runtime, (alone, busy) in samples.items()}


def _enough(rounds: int, elapsed_s: float) -> bool:
    """At least MIN_ROUNDS rounds and MEASURE_BUDGET_S, unless MEASURE_CAP_S has passed (and a round is done)."""
    return (rounds >= MIN_ROUNDS and elapsed_s >= MEASURE_BUDGET_S) or (rounds >= 1 and elapsed_s >= MEASURE_CAP_S)


def _row(alone: list, busy: list, batch_size: int, callers: int, rounds: int) -> dict:
    batch1, per_image = 1000 * min(alone), 1000 * min(busy)     # the best: other load only ever adds
    return {"batch1_ms": round(batch1, 3), "batch_ms_per_image": round(per_image, 3), "batch_size": batch_size,
            "callers": callers, "rounds": rounds, "score_ms": round((batch1 + per_image) / 2, 3)}


# -- the decision cache -----------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or platform.machine()


def machine_fields(options: Options) -> dict:
    return {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)),
            "ai_edge_litert": litert._dist_version("ai-edge-litert"),
            "onnxruntime": litert._dist_version("onnxruntime"), "model_threads": options.threads,
            "worker_threads": options.callers, "batch_size": options.batch_size}


def decision_key(tflite_path: str, onnx_path: str, options: Options) -> str:
    fields = {"format": DECISION_FORMAT, "tflite": litert.file_digest(tflite_path),
              "onnx": litert.file_digest(onnx_path), "tolerance": TOLERANCE, **machine_fields(options)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def decision_path(tflite_path: str, key: str) -> str:
    return f"{tflite_path.removesuffix('.tflite')}.runtime-{key[:16]}.json"


def read_decision(path: str) -> Decision | None:
    try:
        with open(path, encoding="utf-8") as stream:
            saved = json.load(stream)
        return Decision(saved["runtime"], saved["reason"], saved.get("measured", {}), saved.get("rejected", {}),
                        cached=path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring an unreadable runtime decision %s: %s", path, exc)
        return None


def options_from(config) -> Options:
    """Options from the worker's Settings."""
    return Options(runtime=config.runtime, cache_dir=os.path.expanduser(config.litert_cache_dir),
                   threads=max(1, config.model_threads), callers=config.worker_threads or len(os.sched_getaffinity(0)),
                   batch_size=config.batch_size, weights_path=config.model_weights, labels_path=config.model_labels)

