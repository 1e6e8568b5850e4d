"""INT8 against fp32: the accuracy check's figures, per-image latency, raw images/s, and the gateway.

    python -m bench.int8 [--model efficientnet_lite0] [--seconds 3] [--json PATH]

Alone it measures the models only. `python -m bench` (unless --no-int8) calls `measure` after its fp32
sweep: these figures from a child process (a conversion imports TensorFlow there, never in the bench
process), then `python run_server.py` with MODEL=<model>_int8 swept at 16 clients on the same photo
pool, so `int8_gateway_images_per_s` and the fp32 gateway's 16-client figure come from one run, and the
decode+model pipeline with the int8 model on the fp32 run's photos (`int8_pipeline_images_per_s`,
`int8_ratio_pipeline`: the int8 gateway against it, as `ratio_pipeline` is for fp32).

- int8_top1_agreement, int8_fp32_top1_in_top3: the figures the conversion's accuracy check measured
  (models/quantize.py), read from the cached file's .check.json.
- ms_per_image_1_thread: p50 of one invoke on a 1-thread XNNPACK interpreter, on the check set's
  real-photo crops; raw_images_per_s: one 1-thread interpreter per core, each in its own thread.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench import log
from image_gateway import settings as settings_module
from image_gateway.models.lite_variants import INT8_VARIANTS

ROOT = Path(__file__).resolve().parent.parent
LEVEL = 16      # the gateway comparison: 16 clients


def int8_name(model: str) -> str | None:
    """The int8 twin of a served fp32 model (None when it has none)."""
    return next((name for name, fp32 in INT8_VARIANTS.items() if fp32 == model), None)


def invoke_times(path: str, images: np.ndarray, seconds: float) -> list[float]:
    """Seconds per invoke of a 1-thread interpreter cycling through `images` for about `seconds`."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=1)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]
    pixels = images.astype(np.float32)
    interpreter.set_tensor(index, pixels[:1])
    interpreter.invoke()            # warm: XNNPACK packs its weights on the first run
    times, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        started = time.perf_counter()
        interpreter.set_tensor(index, pixels[len(times) % len(pixels)][np.newaxis])
        interpreter.invoke()
        times.append(time.perf_counter() - started)
    return times


def raw_images_per_s(path: str, images: np.ndarray, seconds: float, threads: int) -> float:
    """Images/s of `threads` 1-thread interpreters invoking at once (LiteRT releases the GIL)."""
    counts: list[int] = []

    def run() -> None:
        counts.append(len(invoke_times(path, images, seconds)))

    workers = [threading.Thread(target=run) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return sum(counts) / seconds


def model_figures(model: str, cache_dir: str, seconds: float) -> dict:
    """Both models as a worker loads them (int8 converted and checked first if not cached), timed."""
    from image_gateway.models import litert, quantize

    fp32 = litert.load_litert_model(model, cache_dir)
    int8 = litert.load_litert_model(int8_name(model), cache_dir)
    images, cores = quantize.check_views(int8.spec), len(os.sched_getaffinity(0))
    figures: dict = {"model": int8.spec.name, "fp32_model": model, "check": int8.accuracy, "cores": cores}
    for label, classifier in (("fp32", fp32), ("int8", int8)):
        times = invoke_times(classifier.model_path, images, seconds)
        figures[f"{label}_ms_per_image_1_thread"] = round(1000 * float(np.median(times)), 3)
        figures[f"{label}_raw_images_per_s"] = round(raw_images_per_s(classifier.model_path, images, seconds, cores), 1)
    figures["latency_speedup_1_thread"] = round(figures["fp32_ms_per_image_1_thread"]
                                                / figures["int8_ms_per_image_1_thread"], 3)
    figures["raw_speedup"] = round(figures["int8_raw_images_per_s"] / figures["fp32_raw_images_per_s"], 3)
    figures["int8_top1_agreement"] = (int8.accuracy or {}).get("top1_agreement")
    figures["int8_fp32_top1_in_top3"] = (int8.accuracy or {}).get("fp32_top1_in_top3")
    return figures


def figures_in_child(model: str, cache_dir: str, seconds: float) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "int8.json"
        command = [sys.executable, "-m", "bench.int8", "--model", model, "--cache-dir", cache_dir,
                   "--seconds", str(seconds), "--json", str(out)]
        subprocess.run(command, cwd=ROOT, check=True, timeout=1800, stdout=subprocess.DEVNULL)
        return json.loads(out.read_text())


def measure(args: argparse.Namespace, config: settings_module.Settings, pool, recipe, photos: list[bytes],
            result: dict) -> dict:
    """The int8 keys of the bench JSON: the figures, the int8 pipeline and (unless --url) the int8 gateway
    at 16 clients."""
    from bench import pipeline
    from bench.gateway import Gateway
    from bench.sweep import sweep

    if int8_name(config.model) is None:
        log(f"int8: {config.model} has no int8 variant; skipped")
        return {}
    log(f"int8: {int8_name(config.model)} against {config.model}: accuracy, 1-thread latency, raw (child process)")
    figures = figures_in_child(config.model, os.path.expanduser(config.litert_cache_dir), args.raw_seconds)
    log(f"int8: agreement {figures['int8_top1_agreement']}, in top-3 {figures['int8_fp32_top1_in_top3']}; 1 thread "
        f"{figures['fp32_ms_per_image_1_thread']} -> {figures['int8_ms_per_image_1_thread']} ms; raw "
        f"{figures['fp32_raw_images_per_s']} -> {figures['int8_raw_images_per_s']} images/s")
    batch_sizes = sorted({1, 8, config.batch_size})
    figures["pipeline"] = pipeline.measure_pipeline(photos, batch_sizes, args.raw_seconds,
                                                    env={"MODEL": figures["model"]})
    log(f"int8 pipeline (decode+resize+model, no server): {figures['pipeline']['images_per_s']:.1f} images/s at batch "
        f"{figures['pipeline']['best_batch_size']} (fp32 {result.get('pipeline_images_per_s')})")
    keys = {"int8_top1_agreement": figures["int8_top1_agreement"],
            "int8_fp32_top1_in_top3": figures["int8_fp32_top1_in_top3"],
            "int8_pipeline_images_per_s": figures["pipeline"]["images_per_s"], "int8": figures}
    if args.url:
        return keys
    gateway = Gateway(Path(args.json).with_suffix(".int8.gateway.log"), {"MODEL": figures["model"]}).start()
    try:
        level_args = copy.copy(args)
        level_args.concurrency = [LEVEL]
        level = sweep(level_args, gateway.url, pool, recipe, gateway.process.pid, figures["int8_raw_images_per_s"],
                      figures["int8_ms_per_image_1_thread"], args.timeout or config.request_timeout + 10)[LEVEL]
    finally:
        gateway.stop()
    fp32_level = result.get("per_concurrency", {}).get(str(LEVEL), {}).get("images_per_s")
    figures.update(gateway_level=level, fp32_gateway_images_per_s=fp32_level,
                   gateway_speedup=round(level["images_per_s"] / fp32_level, 3) if fp32_level else None)
    log(f"int8 gateway at {LEVEL} clients: {level['images_per_s']:.1f} images/s (fp32 {fp32_level}), "
        f"errors {level.get('errors')}")
    return {**keys, "int8_gateway_images_per_s": level["images_per_s"],
            "int8_ratio_pipeline": round(level["images_per_s"] / figures["pipeline"]["images_per_s"], 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.int8", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=sorted(INT8_VARIANTS.values()))
    parser.add_argument("--cache-dir", help="LITERT_CACHE_DIR (default: the setting's)")
    parser.add_argument("--seconds", type=float, default=3.0, help="per timing (default 3)")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args(argv)
    cache_dir = args.cache_dir or os.path.expanduser(settings_module.load().litert_cache_dir)
    figures = model_figures(args.model, cache_dir, args.seconds)
    text = json.dumps(figures, indent=1)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")


if __name__ == "__main__":
    main()
