"""One run: LiteRT against ONNX Runtime (raw and through the gateway), RUNTIME=auto's choice, OCR requests/s.

`python -m bench --runtimes` (`--ocr`: the OCR figure alone), for the built-in classifier MODEL.

Every comparison is an A/B inside the run, interleaved round by round (A B, B A, A B ...), so that other load
on the machine and its drift hit both runtimes alike; the ratios are the figures to quote.
1. raw: both models in this process from LITERT_CACHE_DIR (the LiteRT file and its ONNX twin, made once as
   the worker makes them), each round `--raw-seconds` of BATCH_SIZE batches from the worker's callers
   (WORKER_THREADS, one per core by default: images/s) and of single images from one caller (latency).
2. auto: `python run_server.py` with RUNTIME=auto (`--fresh-choice` deletes the cached decision first, so
   the worker measures again); its runtime from GET /v1/models and its reason from its log.
3. gateway: two `python run_server.py` at once, RUNTIME=litert and RUNTIME=onnxruntime, CACHE_TTL=0; each
   round `--warmup` + `--duration` s of `--concurrency` closed-loop clients on one, then the other.
4. OCR (bench/ocr_rate.py), unless --no-ocr.
"""
from __future__ import annotations

import argparse
import gc
import glob
import json
import os
import statistics
import time
from pathlib import Path

import numpy as np

from bench import loadgen, log, ocr_rate, pipeline, raw_model, system
from bench.gateway import Gateway
from image_gateway import settings as settings_module
from image_gateway.models import litert, onnx_builtin
from image_gateway.worker.threads import predict_threads

RUNTIMES = ("litert", "onnxruntime")


# (flag, type, default, help): the numbers of a run
NUMBERS = (("--rounds", int, 3, "A/B rounds, raw and gateway"),
           ("--raw-seconds", float, 1.5, "per runtime per round, raw"),
           ("--duration", float, 6.0, "measured seconds per gateway window"),
           ("--warmup", float, 1.5, "unmeasured seconds before each window"),
           ("--concurrency", int, 16, "closed-loop clients of the gateway"),
           ("--pool", int, 400, "distinct photos (re-sent with a new JPEG comment once used up; the gateways run "
                                "with CACHE_TTL=0)"),
           ("--timeout", float, 60.0, "client socket timeout, s"))
SWITCHES = (("--fresh-choice", "delete the cached RUNTIME=auto decision of the model first, so the auto "
                               "gateway's worker measures again"),
            ("--ocr", "only the OCR figure"), ("--no-ocr", "skip the OCR figure"),
            ("--no-gateway", "raw figures and auto's choice only"))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --runtimes", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/runtimes.json", help="where to write the figures")
    for flag, kind, default, text in NUMBERS:
        parser.add_argument(flag, type=kind, default=default, help=f"{text} ({default:g})")
    for flag, text in SWITCHES:
        parser.add_argument(flag, action="store_true", help=text)
    ocr_rate.add_arguments(parser)
    return parser.parse_args(argv)


def interleaved(rounds: int) -> list[tuple[str, str]]:
    """A B, B A, A B ...: each runtime goes first as often as the other (within one)."""
    return [RUNTIMES if index % 2 == 0 else RUNTIMES[::-1] for index in range(rounds)]


def raw_ab(config: settings_module.Settings, rounds: int, seconds: float) -> dict:
    """Both runtimes of config.model in this process, interleaved: images/s and batch-1 latency."""
    lite = litert.load_litert_model(config.model, os.path.expanduser(config.litert_cache_dir), 1)
    if not isinstance(lite, litert.LiteRTClassifier) or lite.model_path is None:
        raise SystemExit(f"{config.model} has no cached LiteRT file to compare")
    models = {"litert": lite, "onnxruntime": onnx_builtin.OnnxClassifier(lite.spec, onnx_builtin.ensure_onnx(
        lite.model_path), 1)}
    size, callers, batch_size = lite.spec.input_size, predict_threads(config), config.batch_size
    rng = np.random.default_rng(0)
    full = rng.integers(0, 256, (batch_size, size, size, 3), dtype=np.uint8)
    samples: dict = {runtime: {"images_per_s": [], "batch1_ms": [], "busy_cores": []} for runtime in RUNTIMES}
    for order in interleaved(rounds):
        for runtime in order:
            busy, start = system.machine_busy_s(), time.perf_counter()
            row = raw_model.measure_batch(models[runtime], full, seconds, callers)
            alone = raw_model.measure_batch(models[runtime], full[:1], seconds / 3, 1)
            samples[runtime]["busy_cores"].append(round((system.machine_busy_s() - busy)
                                                        / (time.perf_counter() - start), 2))
            samples[runtime]["images_per_s"].append(round(row["images_per_s"], 2))
            samples[runtime]["batch1_ms"].append(round(alone["latency_ms_p50"], 3))
        log("raw round: " + ", ".join(f"{r} {samples[r]['images_per_s'][-1]:.1f} images/s, "
                                      f"{samples[r]['batch1_ms'][-1]:.2f} ms alone" for r in RUNTIMES))
    result = {runtime: {**rows, "images_per_s_median": statistics.median(rows["images_per_s"]),
                        "batch1_ms_median": statistics.median(rows["batch1_ms"])}
              for runtime, rows in samples.items()}
    result.update(batch_size=batch_size, callers=callers, seconds=seconds, model=config.model,
                  onnx_over_litert_images_per_s=_ratio(samples, "images_per_s"),
                  onnx_over_litert_batch1_ms=_ratio(samples, "batch1_ms"))
    return result


def _ratio(samples: dict, key: str) -> float:
    """The median over rounds of ONNX Runtime's figure over LiteRT's in the same round."""
    pairs = zip(samples["onnxruntime"][key], samples["litert"][key], strict=True)
    return round(statistics.median(onnx / lite for onnx, lite in pairs), 3)


def auto_choice(args: argparse.Namespace, config: settings_module.Settings, log_dir: Path) -> dict:
    """Start a RUNTIME=auto gateway: the runtime its worker chose for the model and the logged reason."""
    cache_dir = os.path.expanduser(config.litert_cache_dir)
    if args.fresh_choice:
        for path in glob.glob(os.path.join(cache_dir, f"{config.model}-*.runtime-*.json")):
            os.remove(path)
    gateway = Gateway(log_dir / "auto.gateway.log", {"RUNTIME": "auto"}).start()
    try:
        runtime = pipeline.gateway_runtime(gateway.url, config.model)
    finally:
        gateway.stop()
    lines = [message for message in map(_message, gateway.log_path.read_text(errors="replace").splitlines())
             if "(RUNTIME=auto)" in message or " rejected: " in message]
    reason = lines[-1].split("(RUNTIME=auto): ", 1)[-1] if lines else ""
    log(f"auto chose {runtime}: {reason}")
    return {"runtime_auto_chose": runtime, "auto_reason": reason, "auto_log": lines,
            "auto_decision_cached": "[cached decision" in reason}


def _message(line: str) -> str:
    """A log line's message (LOG_FORMAT=json writes one object per line)."""
    if line.startswith("{"):
        try:
            return str(json.loads(line).get("message", line))
        except ValueError:
            pass
    return line


def gateway_ab(args: argparse.Namespace, config: settings_module.Settings, log_dir: Path) -> dict:
    """Both forced gateways running at once, measured in turn, round by round."""
    recipe = loadgen.PhotoRecipe(seed=0)
    pool = loadgen.BodyPool.from_jpegs(loadgen.make_photos(0, args.pool, recipe, processes=os.cpu_count() or 1))
    gateways = {runtime: Gateway(log_dir / f"{runtime}.gateway.log", {"RUNTIME": runtime, "CACHE_TTL": "0"})
                for runtime in RUNTIMES}
    try:
        for gateway in gateways.values():
            gateway.start()
        served = {runtime: pipeline.gateway_runtime(gateway.url, config.model) for runtime, gateway in gateways.items()}
        if served != {runtime: runtime for runtime in RUNTIMES}:
            raise SystemExit(f"the gateways serve {served}, not one runtime each")
        samples: dict = {runtime: {"images_per_s": [], "p50_ms": [], "errors": 0, "busy_cores": []}
                         for runtime in RUNTIMES}
        for order in interleaved(args.rounds):
            for runtime in order:
                generator = loadgen.LoadGenerator(gateways[runtime].url, pool, args.timeout)
                busy = system.machine_busy_s()
                level = generator.run_level(args.concurrency, args.duration, args.warmup).summary()
                samples[runtime]["busy_cores"].append(round((system.machine_busy_s() - busy)
                                                            / (args.duration + args.warmup), 2))
                samples[runtime]["images_per_s"].append(level["images_per_s"])
                samples[runtime]["p50_ms"].append(level["p50_ms"])
                samples[runtime]["errors"] += level["errors"]
            log("gateway round: " + ", ".join(f"{r} {samples[r]['images_per_s'][-1]:.1f} images/s" for r in RUNTIMES))
    finally:
        for gateway in gateways.values():
            gateway.stop()
    result = {runtime: {**rows, "images_per_s_median": statistics.median(rows["images_per_s"])}
              for runtime, rows in samples.items()}
    result.update(concurrency=args.concurrency, duration_s=args.duration, bodies_reused_with_marker=pool.marked,
                  onnx_over_litert_images_per_s=_ratio(samples, "images_per_s"))
    return result


def summary(result: dict) -> dict:
    """The flat keys: images/s of each runtime raw and through the gateway, auto's choice, OCR's rate."""
    flat = {key: result[key] for key in ("runtime_auto_chose", "ocr_requests_per_s") if key in result}
    for part in ("raw", "gateway"):
        for runtime in RUNTIMES if part in result else ():
            flat[f"{part}_{runtime}_images_per_s"] = result[part][runtime]["images_per_s_median"]
        if part in result:
            flat[f"{part}_onnx_over_litert"] = result[part]["onnx_over_litert_images_per_s"]
    return flat


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    config = settings_module.load()
    log_dir = Path(args.json).with_suffix("")
    log_dir.mkdir(parents=True, exist_ok=True)
    result: dict = {"machine": system.machine_info(), "model": config.model}
    if not args.ocr:
        log(f"raw A/B: {config.model}, {args.rounds} rounds of {args.raw_seconds:g} s per runtime")
        result["raw"] = raw_ab(config, args.rounds, args.raw_seconds)
        gc.collect()
        result.update(auto_choice(args, config, log_dir))
        if not args.no_gateway:
            log(f"gateway A/B: {args.rounds} rounds of {args.warmup:g} + {args.duration:g} s at "
                f"{args.concurrency} clients per runtime")
            result["gateway"] = gateway_ab(args, config, log_dir)
    if args.ocr or not args.no_ocr:
        result.update(ocr_rate.measure(args, log_dir))
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    result["summary"] = summary(result)
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result["summary"], indent=1))
    log(f"wrote {args.json} (gateway logs in {log_dir}/)")
    return result


if __name__ == "__main__":
    main()
