"""End-to-end benchmark: raw model baseline, then the gateway under a closed-loop concurrency sweep.

    python -m bench --json results/bench.json [--url URL] [--duration S] [--concurrency 1,4,16,64]
                    [--png PATH] [--quick]

Order (never two measurements at once): build the photo pool; measure the raw model in child processes
(their TensorFlow/LiteRT threads and memory are gone before anything else runs); the decode+model pipeline
in one process per core; time each gateway stage and the decode in this process; start `python
run_server.py` (unless --url); sweep; stop it. With --compare-runtime R: raw, pipeline and sweep again,
the gateway started with RUNTIME=R. Then print, write JSON and PNG.
See bench/README.md for what every number means. The pieces: raw_model (baseline), pipeline (the bound
with decoding), stages (per-stage CPU), gateway (the child process), sweep (the levels), scrape (its
/metrics), system (/proc), report.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench import loadgen, log, pipeline, raw_model, report, stages, system
from bench.gateway import Gateway
from bench.sweep import cpu_summary, sweep
from image_gateway import (
    models,  # get_spec only: no TensorFlow in this process
    processes,
)
from image_gateway import settings as settings_module


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--png", help="the plot (default: the JSON path with .png)")
    parser.add_argument("--url", help="benchmark this running gateway instead of starting one")
    parser.add_argument("--pid", type=int, help="with --url: a local gateway's pid, to account its CPU")
    parser.add_argument("--quick", action="store_true", help="levels 1,16 for 3 s each, shorter raw run")
    parser.add_argument("--duration", type=float, help="seconds measured per concurrency level (10; quick 3)")
    parser.add_argument("--warmup", type=float, help="seconds of unmeasured load before each level (2; quick 1)")
    parser.add_argument("--concurrency", help="comma-separated levels (1,4,16,64; quick 1,16)")
    parser.add_argument("--raw-seconds", type=float, help="seconds per raw batch size (3; quick 1.5)")
    parser.add_argument("--raw-batch-sizes", help="raw batch sizes (1,8,16,32,64 and BATCH_SIZE)")
    parser.add_argument("--pool", type=int, help="distinct photos built up front (2000; quick 500); more are "
                        "built between levels when a level could use them up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-breakdown", action="store_true", help="skip the per-stage CPU micro-benchmarks")
    parser.add_argument("--timeout", type=float, help="client socket timeout, s (REQUEST_TIMEOUT + 10)")
    parser.add_argument("--overload", action="store_true", help="the overload mode instead (bench/overload.py; "
                        "`python -m bench --overload --help` for its options)")
    parser.add_argument("--soak", metavar="MINUTES", help="the soak of the cluster layout instead (bench/soak.py)")
    parser.add_argument("--cache-memory", metavar="MINUTES", help="Redis memory under distinct images with the "
                        "result cache on, per minute, instead (bench/cache_memory.py)")
    parser.add_argument("--quota", action="store_true", help="one client limited to 20/s sending 100/s through "
                        "nginx to 2 web processes instead (bench/quota.py; `python -m bench --quota --help`)")
    parser.add_argument("--serving", action="store_true", help="the serving path's own CPU per image, web, worker "
                        "and Redis apart, optionally A/B against --baseline REF instead (bench/serving.py)")
    parser.add_argument("--hostile", action="store_true", help="worst-case requests and the web process' peak "
                        "RSS instead (bench/hostile.py; `python -m bench --hostile --help`)")
    parser.add_argument("--runtimes", action="store_true", help="LiteRT against ONNX Runtime (raw and gateway, "
                        "A/B), auto's choice and OCR requests/s instead (bench/runtimes.py; `--runtimes --help`)")
    parser.add_argument("--ocr", action="store_true", help="OCR requests/s for one page instead (bench/ocr_rate.py)")
    parser.add_argument("--compare-runtime", choices=settings_module.RUNTIMES, metavar="RUNTIME",
                        help="then the same raw baseline, pipeline and sweep with the gateway on RUNTIME "
                             "(e.g. tensorflow), reported side by side")
    parser.add_argument("--no-int8", action="store_true", help="skip the int8 figures and int8 gateway (bench/int8.py)")
    args = parser.parse_args(argv)
    if args.compare_runtime and args.url:
        parser.error("--compare-runtime starts its own gateways; it does not go with --url")
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.warmup = args.warmup if args.warmup is not None else (1.0 if args.quick else 2.0)
    args.concurrency = [int(c) for c in (args.concurrency or ("1,16" if args.quick else "1,4,16,64")).split(",")]
    args.raw_seconds = args.raw_seconds or (1.5 if args.quick else 3.0)
    args.pool = args.pool or (500 if args.quick else 2000)
    args.png = args.png or str(Path(args.json).with_suffix(".png"))
    return args


def build_photos(count: int, recipe: loadgen.PhotoRecipe) -> list[bytes]:
    started = time.perf_counter()
    jpegs = loadgen.make_photos(0, count, recipe, processes=os.cpu_count() or 1)
    log(f"{len(jpegs)} distinct photos, mean {np.mean([len(j) for j in jpegs]) / 1024:.0f} KiB "
        f"({time.perf_counter() - started:.1f} s)")
    return jpegs


def measure_baseline(args: argparse.Namespace, config: settings_module.Settings, spec: models.ModelSpec,
                     env: dict) -> tuple[dict, dict, float, float | None]:
    """The raw model in child processes (this environment + `env`), on the runtime the worker would use,
    with the worker's threading and with one caller:
    (the first child's document, the best row per batch size, batch-1 alone ms, best images/s)."""
    batch_sizes = ([int(b) for b in args.raw_batch_sizes.split(",")] if args.raw_batch_sizes
                   else sorted({1, 8, 16, 32, 64, config.batch_size}))
    log(f"raw model {spec.name} (RUNTIME={config.runtime}): batch sizes {batch_sizes}, {args.raw_seconds:g} s each "
        "(child process)")
    busy_before, children_before = system.machine_busy_s(), system.children_cpu_s()
    wall_before = time.perf_counter()
    raw = raw_model.measure_raw_in_child(config, batch_sizes, args.raw_seconds, env)
    one_caller = raw_model.measure_raw_in_child(config, batch_sizes, args.raw_seconds, {**env, **raw_model.ONE_CALLER})
    others_s = system.machine_busy_s() - busy_before - (system.children_cpu_s() - children_before)
    raw["other_processes_cores"] = round(others_s / (time.perf_counter() - wall_before), 2)
    raw_rows = raw_model.best_raw_rows(raw["rows"], one_caller["rows"])
    raw_batch1_ms = min(raw["batch1_alone_ms"], one_caller["batch1_alone_ms"])
    best_batch, raw_ips = report.best_raw(raw_rows)
    log(f"raw best {raw_ips:.1f} images/s at batch {best_batch} on {raw.get('runtime')}; one image alone p50 "
        f"{raw_batch1_ms:.2f} ms")
    return raw, raw_rows, raw_batch1_ms, raw_ips


def run_gateway(args: argparse.Namespace, config: settings_module.Settings, pool: loadgen.BodyPool,
                recipe: loadgen.PhotoRecipe, raw_ips: float, raw_batch1_ms: float, env: dict) -> dict:
    """Start the gateway (unless --url; this environment + `env`), read its workers' runtime, time
    GET /healthz, sweep the levels, read /status, stop it."""
    gateway = None
    try:
        if args.url:
            url, root_pid = args.url.rstrip("/"), args.pid
        else:
            suffix = f".{env['RUNTIME']}.gateway.log" if env.get("RUNTIME") else ".gateway.log"
            gateway = Gateway(Path(args.json).with_suffix(suffix), env)
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            log(f"starting python run_server.py on port {gateway.port} (log {gateway.log_path})")
            gateway.start()
            url, root_pid = gateway.url, gateway.process.pid
            log(f"gateway ready ({url})")
        runtime = pipeline.gateway_runtime(url, config.model)
        log(f"the gateway's workers run {config.model} on {runtime} (GET /v1/models)")
        http = {} if args.no_breakdown else stages.http_costs(url, root_pid, 1.0 if args.quick else 2.0)
        levels = sweep(args, url, pool, recipe, root_pid, raw_ips, raw_batch1_ms,
                       args.timeout or config.request_timeout + 10)
        status_after = processes.get_json(url + "/status", timeout_s=10)
    finally:
        exit_code = gateway.stop() if gateway else None
    return {"http": http, "levels": levels, "runtime": runtime,
            "gateway": {"url": url if args.url else "embedded (python run_server.py)", "status_after": status_after,
                        "exit_code": exit_code, "log": str(gateway.log_path) if gateway else None}}


def measure_pipeline(args: argparse.Namespace, config: settings_module.Settings, photos: list[bytes],
                     raw_rows: dict, env: dict) -> dict:
    """pipeline_images_per_s: decode+resize and the model in one process per core, at batch 1, the raw
    model's best batch and BATCH_SIZE; the best of them."""
    batch_sizes = sorted({1, report.best_raw(raw_rows)[0] or 1, config.batch_size})
    log(f"pipeline (decode+resize+model, one process per core, no server): batch sizes {batch_sizes}, "
        f"{args.raw_seconds:g} s each")
    result = pipeline.measure_pipeline(photos, batch_sizes, args.raw_seconds, env=env)
    log(f"pipeline best {result['images_per_s']:.1f} images/s at batch {result['best_batch_size']} "
        f"on {result['runtime']} ({result['processes']} processes)")
    return result


def measure_run(args: argparse.Namespace, env: dict, spec: models.ModelSpec, pool: loadgen.BodyPool,
                recipe: loadgen.PhotoRecipe, photos: list[bytes], once: dict) -> dict:
    """One runtime's measurements, settings from this environment + `env`: raw baseline, pipeline, the
    per-stage costs and decode_ms (first run only: they do not depend on the runtime), the sweep."""
    config = settings_module.load({**os.environ, **env})
    raw, raw_rows, raw_batch1_ms, raw_ips = measure_baseline(args, config, spec, env)
    pipeline_result = measure_pipeline(args, config, photos, raw_rows, env)
    if not once:
        once["decode"] = pipeline.decode_ms(photos, spec, config.max_image_pixels)
        log(f"decode_ms (imaging.prepare_image, median of {len(photos)} photos): {once['decode']['decode_ms']:.2f}")
        once["stages"] = ({}, {}) if args.no_breakdown else stages.stage_costs(photos, spec, config)
        if once["stages"][0]:
            log("stage CPU ms per image: " + ", ".join(f"{k} {v:.3f}" for k, v in once["stages"][0].items()))
        gc.collect()
    run = run_gateway(args, config, pool, recipe, raw_ips or 100.0, raw_batch1_ms, env)
    stage_ms, stage_details = once["stages"]
    return report.build_result(
        raw_rows, run["levels"], raw_batch1_ms=raw_batch1_ms, runtime=run["runtime"],
        decode_ms=once["decode"]["decode_ms"], pipeline=pipeline_result,
        cpu_per_image_ms=cpu_summary(stage_ms, run["http"], raw_rows, run["levels"]) if stage_ms else {},
        settings=system.settings_record(config, "bench environment" + (f" + {env}" if env else "")
                                        + (" (the --url gateway may differ)" if args.url else "")),
        raw_runtime=raw.get("runtime"), decode=once["decode"],
        raw_load_s=round(raw["load_s"], 2), raw_real_photo_check=raw.get("real_photo_check"),
        raw_other_processes_cores=raw.get("other_processes_cores"), raw_backend=raw.get("backend"),
        cpu_breakdown_details={**stage_details, **run["http"]}, gateway=run["gateway"],
        load={"duration_s": args.duration, "warmup_s": args.warmup, "concurrency": args.concurrency,
              "distinct_bodies_sent": pool.taken, "bodies_reused_with_marker": pool.marked,
              "pool_recipe": recipe.__dict__},
    )


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["_raw"]:
        return raw_model.raw_child(argv[1:])
    if "--overload" in argv:
        from bench import overload
        return overload.main([arg for arg in argv if arg != "--overload"])
    if "--soak" in argv or any(arg.startswith("--soak=") for arg in argv):
        from bench import soak
        return soak.main(argv)
    if "--quota" in argv:
        from bench import quota
        return quota.main([arg for arg in argv if arg != "--quota"])
    if "--serving" in argv:
        from bench import serving
        return serving.main([arg for arg in argv if arg != "--serving"])
    if "--hostile" in argv:
        from bench import hostile
        hostile.main([arg for arg in argv if arg != "--hostile"])
        return None
    if "--runtimes" in argv or "--ocr" in argv:
        from bench import runtimes
        runtimes.main([arg for arg in argv if arg != "--runtimes"])
        return None
    if "--cache-memory" in argv:
        from bench import cache_memory
        cache_memory.main([arg for arg in argv if arg != "--cache-memory"])
        return None
    args = parse_args(argv)
    config = settings_module.load()
    spec = models.get_spec(config.model, weights_path=config.model_weights, labels_path=config.model_labels)
    machine = system.machine_info()
    recipe = loadgen.PhotoRecipe(seed=args.seed)
    jpegs = build_photos(args.pool, recipe)
    pool = loadgen.BodyPool.from_jpegs(jpegs)
    photos = jpegs[: (60 if args.quick else 200)]   # decode_ms, the stages and the pipeline decode these
    del jpegs
    once: dict = {}
    result = measure_run(args, {}, spec, pool, recipe, photos, once)
    result["machine"] = {**machine, "tensorflow_backend": result.pop("raw_backend")}
    if args.compare_runtime:
        log(f"--compare-runtime {args.compare_runtime}: the same measurements with RUNTIME={args.compare_runtime}")
        compare = measure_run(args, {"RUNTIME": args.compare_runtime}, spec, pool, recipe, photos, once)
        compare["machine"] = {"tensorflow_backend": compare.pop("raw_backend"), "same_as": "the main run"}
        result["compare"] = compare
        result["compare_speedup"] = report.speedups(result, compare)
    if not args.no_int8:
        from bench import int8
        result.update(int8.measure(args, config, pool, recipe, photos, result))
    result["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print()
    print(report.format_table(result))
    report.write_json(result, args.json)
    report.plot(result, args.png)
    log(f"wrote {args.json} and {args.png}")


if __name__ == "__main__":
    main()
