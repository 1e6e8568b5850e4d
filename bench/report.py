"""The benchmark's result: one dict with every number, its table, its JSON file and its PNG."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

NOISY_CORES = 0.25     # CPU cores used by other processes above which a run is flagged as noisy
P50_BUDGET_MS = 5.0    # what the gateway may add to the model and the decode at concurrency 1
PIPELINE_TARGET = 0.80


def best_raw(raw: dict) -> tuple[int | None, float | None]:
    """(batch size, images/s) of the fastest raw batch size."""
    if not raw:
        return None, None
    batch, row = max(raw.items(), key=lambda item: item[1]["images_per_s"])
    return int(batch), row["images_per_s"]


def build_result(raw: dict, levels: dict, *, raw_batch1_ms: float | None = None, cpu_per_image_ms: dict | None = None,
                 settings: dict | None = None, machine: dict | None = None, runtime: str | None = None,
                 decode_ms: float | None = None, pipeline: dict | None = None, **extra) -> dict:
    """The JSON document from the raw rows ({batch: {images_per_s, latency_ms_p50, ...}}), the level
    summaries ({concurrency: LevelResult.summary()}), the gateway's runtime, decode_ms and the
    pipeline measurement ({images_per_s, best_batch_size, ...})."""
    raw = {int(k): v for k, v in raw.items()}
    levels = {int(k): v for k, v in sorted(levels.items(), key=lambda item: int(item[0]))}
    best_batch, raw_ips = best_raw(raw)
    if raw_batch1_ms is None and 1 in raw:
        raw_batch1_ms = raw[1].get("latency_ms_p50")
    gateway_ips = max((level["images_per_s"] for level in levels.values()), default=None)
    best_level = max(levels, key=lambda c: levels[c]["images_per_s"]) if levels else None
    pipeline = pipeline or {}
    p50_c1 = levels.get(1, {}).get("p50_ms")
    result = {
        "runtime": runtime,
        "raw_images_per_s": _round(raw_ips),
        "raw_best_batch_size": best_batch,
        "raw_batch1_ms": _round(raw_batch1_ms),
        "raw": {str(batch): {"images_per_s": _round(row["images_per_s"]),
                             "ms_per_batch": _round(row.get("latency_ms_p50")),
                             **{k: v for k, v in row.items() if k not in ("images_per_s",)}}
                for batch, row in sorted(raw.items())},
        "pipeline_images_per_s": _round(pipeline.get("images_per_s")),
        "pipeline_best_batch_size": pipeline.get("best_batch_size"),
        "decode_ms": _round(decode_ms, 3),
        "gateway_images_per_s": _round(gateway_ips),
        "gateway_best_concurrency": best_level,
        "ratio": _ratio(gateway_ips, raw_ips),
        "ratio_pipeline": _ratio(gateway_ips, pipeline.get("images_per_s")),
        "p50_ms_c1": p50_c1,
        "p50_over_raw_batch1_ms": _round(p50_c1 - raw_batch1_ms) if p50_c1 is not None and raw_batch1_ms else None,
        "p50_c1_over_model_and_decode_ms": (_round(p50_c1 - raw_batch1_ms - decode_ms)
                                            if None not in (p50_c1, raw_batch1_ms, decode_ms) else None),
        "server_cpu_ms_per_image": levels.get(16, levels.get(best_level, {})).get("server_cpu_ms_per_image"),
        "per_concurrency": {str(c): level for c, level in levels.items()},
        "p99_ms": {str(c): level.get("p99_ms") for c, level in levels.items()},
        "errors": sum(level.get("errors", 0) for level in levels.values()),
        "errors_by_code": _merge_counts(level.get("errors_by_code", {}) for level in levels.values()),
        "pipeline": pipeline,
        "cpu_per_image_ms": cpu_per_image_ms or {},
        "settings": settings or {},
        "machine": machine or {},
    }
    result.update(extra)
    return result


def speedups(main: dict, other: dict) -> dict:
    """main / other for the headline numbers and per concurrency level (e.g. LiteRT over TensorFlow)."""
    keys = ("raw_images_per_s", "pipeline_images_per_s", "gateway_images_per_s")
    by_level = {c: _ratio(level["images_per_s"], other["per_concurrency"].get(c, {}).get("images_per_s"))
                for c, level in main["per_concurrency"].items()}
    return {"runtimes": [main.get("runtime"), other.get("runtime")],
            **{key: _ratio(main.get(key), other.get(key)) for key in keys},
            "images_per_s_by_concurrency": by_level}


def _ratio(numerator, denominator, digits: int = 3):
    return round(numerator / denominator, digits) if numerator is not None and denominator else None


def _merge_counts(counts) -> dict:
    merged: dict[str, int] = {}
    for count in counts:
        for key, value in count.items():
            merged[key] = merged.get(key, 0) + value
    return merged


def _round(value, digits: int = 2):
    return None if value is None else round(float(value), digits)


def _fmt(value, width: int, digits: int = 1) -> str:
    text = "-" if value is None else f"{value:.{digits}f}"
    return text.rjust(width)


# ------------------------------------------------------------------------------------------ table
def format_table(result: dict) -> str:
    """The human summary printed at the end of a run (and the --compare-runtime run beside it)."""
    lines = _level_lines(result) + [""] + _summary_lines(result)
    if result.get("compare"):
        compare = result["compare"]
        lines += ["", f"--compare-runtime: the same with the gateway on {compare.get('runtime')}"]
        lines += _level_lines(compare) + [""] + _summary_lines(compare) + [""] + _side_by_side(result, compare)
    noise = [v for run in (result, result.get("compare") or {}) for v in
             [run.get("raw_other_processes_cores"), (run.get("pipeline") or {}).get("other_processes_cores")] +
             [level.get("other_processes_cores") for level in run.get("per_concurrency", {}).values()]
             if v is not None]
    if noise and max(noise) > NOISY_CORES:
        lines.append(f"WARNING: other processes used up to {max(noise):.2f} cores during the measurements; "
                     "re-run on a quiet machine before quoting these numbers")
    cpu = result.get("cpu_per_image_ms") or {}
    if cpu:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if isinstance(v, (int, float)))
        lines.append(f"CPU ms per image: {stages}")
    return "\n".join(lines)


def _level_lines(result: dict) -> list[str]:
    lines = [f"{'concurrency':>11} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}"
             f" {'batch':>6} {'model busy':>10} {'cpu ms/img':>10} {'other cores':>11}"]
    for c, level in result["per_concurrency"].items():
        lines.append(f"{c:>11} {_fmt(level['images_per_s'], 9)} {_fmt(level['p50_ms'], 8)}"
                     f" {_fmt(level['p90_ms'], 8)} {_fmt(level['p99_ms'], 8)} {level['errors']:>7}"
                     f" {_fmt(level.get('mean_batch_size'), 6)} {_fmt(level.get('model_busy_fraction'), 10, 2)}"
                     f" {_fmt(level.get('gateway_cpu_ms_per_image'), 10)}"
                     f" {_fmt(level.get('other_processes_cores'), 11, 2)}")
    return lines


def _summary_lines(result: dict) -> list[str]:
    pipeline = result.get("pipeline") or {}
    raw_runtime = result.get("raw_runtime")
    lines = [f"runtime:   {result.get('runtime')} (the gateway's workers, GET /v1/models)"
             + (f"; raw baseline and pipeline on {raw_runtime}" if raw_runtime else "")]
    if raw_runtime and result.get("runtime") and raw_runtime != result["runtime"]:
        lines.append("WARNING: the baseline ran on another runtime than the gateway's workers")
    lines.append(f"raw model: {_fmt(result['raw_images_per_s'], 0)} images/s (best, batch "
                 f"{result['raw_best_batch_size']}), batch 1 {_fmt(result['raw_batch1_ms'], 0, 1).strip()} ms")
    lines.append(f"pipeline:  {_fmt(result.get('pipeline_images_per_s'), 0)} images/s (decode+resize+model, "
                 f"batch {result.get('pipeline_best_batch_size')}, {pipeline.get('processes')} processes, no server)"
                 f"; decode_ms {_fmt(result.get('decode_ms'), 0, 2).strip()}")
    lines.append(f"gateway:   {_fmt(result['gateway_images_per_s'], 0)} images/s"
                 f" (best, c={result['gateway_best_concurrency']})"
                 f"  ratio {_fmt(result['ratio'], 0, 3).strip()}"
                 f"  ratio_pipeline {_fmt(result.get('ratio_pipeline'), 0, 3).strip()}"
                 f"  p50 at c=1 {_fmt(result['p50_ms_c1'], 0).strip()} ms"
                 f" (model + decode + {_fmt(result.get('p50_c1_over_model_and_decode_ms'), 0).strip()})"
                 f"  errors {result['errors']}")
    int8 = result.get("int8") or {}
    if int8:
        lines.append(f"int8:      {int8.get('model')}: "
                     f"raw {_fmt(int8.get('int8_raw_images_per_s'), 0).strip()} images/s"
                     f" (fp32 {_fmt(int8.get('fp32_raw_images_per_s'), 0).strip()}, 1-thread interpreters)"
                     f"  pipeline {_fmt(result.get('int8_pipeline_images_per_s'), 0).strip()}"
                     f"  gateway {_fmt(result.get('int8_gateway_images_per_s'), 0).strip()} at c=16"
                     f"  ratio_pipeline {_fmt(result.get('int8_ratio_pipeline'), 0, 3).strip()}"
                     f"  top-1 agreement {_fmt(result.get('int8_top1_agreement'), 0, 3).strip()}"
                     f"  fp32 top-1 in top-3 {_fmt(result.get('int8_fp32_top1_in_top3'), 0, 3).strip()}")
    return lines


def _side_by_side(main: dict, other: dict) -> list[str]:
    names = (str(main.get("runtime")), str(other.get("runtime")))
    rows = [("raw images/s", "raw_images_per_s", 1), ("pipeline images/s", "pipeline_images_per_s", 1),
            ("gateway images/s", "gateway_images_per_s", 1), ("ratio_pipeline", "ratio_pipeline", 3),
            ("p50 ms at c=1", "p50_ms_c1", 1), ("errors", "errors", 0)]
    rows += [(f"images/s at c={c}", ("per_concurrency", c), 1) for c in main["per_concurrency"]]
    lines = [f"{'side by side':<20} {names[0]:>11} {names[1]:>11} {names[0] + '/' + names[1]:>22}"]
    for label, key, digits in rows:
        a, b = (_lookup(run, key) for run in (main, other))
        lines.append(f"{label:<20} {_fmt(a, 11, digits)} {_fmt(b, 11, digits)} {_fmt(_ratio(a, b), 22, 2)}")
    return lines


def _lookup(run: dict, key):
    if isinstance(key, tuple):
        return (run.get(key[0], {}).get(key[1]) or {}).get("images_per_s")
    return run.get(key)


def write_json(result: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


# ------------------------------------------------------------------------------------------- plot
def plot(result: dict, path: str | os.PathLike) -> None:
    """Images/s and p50/p99 latency against concurrency, with the raw model and the pipeline as
    reference lines; with --compare-runtime both runtimes' curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    runs = [(result, "tab:blue")] + ([(result["compare"], "tab:purple")] if result.get("compare") else [])
    for run, colour in runs:
        _plot_throughput(left, run, colour, target=run is result)
        _plot_latency(right, run, colour, first=run is result)
    concurrency = [int(c) for c in result["per_concurrency"]]
    left.set(xscale="log", xlabel="concurrent clients (closed loop)", ylabel="images / s",
             title=f"Throughput (ratio_pipeline {result.get('ratio_pipeline')})")
    left.set_ylim(bottom=0)
    right.set(xscale="log", yscale="log", xlabel="concurrent clients (closed loop)", ylabel="ms",
              title="Latency per request")
    shown = [v for line in right.get_lines() for v in line.get_ydata() if not math.isnan(v)]
    if shown:   # readable 1-2-5 ticks: a log axis over less than a decade would show one label
        ticks = [m * 10 ** e for e in range(-1, 6) for m in (1, 2, 5)
                 if min(shown) / 2 <= m * 10 ** e <= max(shown) * 2]
        right.set_yticks(ticks, [f"{t:g}" for t in ticks])
    for axis in (left, right):
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.minorticks_off()
        axis.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=7, loc="best")
    machine, settings = result.get("machine", {}), result.get("settings", {})
    figure.suptitle(f"{settings.get('model', '')}  batch {settings.get('batch_size', '')}"
                    f"  wire {settings.get('wire_dtype', '')}"
                    f"  |  {machine.get('cpu_model', '')} x{machine.get('nproc', '')}  |  {machine.get('date', '')}",
                    fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _plot_throughput(axis, run: dict, colour: str, target: bool) -> None:
    """One runtime's gateway curve, its raw model (dashed) and pipeline (dash-dot; the target dotted)."""
    levels, name = run["per_concurrency"], run.get("runtime") or "gateway"
    concurrency = [int(c) for c in levels]
    throughput = [level["images_per_s"] for level in levels.values()]
    axis.plot(concurrency, throughput, "o-", color=colour, label=f"gateway on {name}")
    if run.get("raw_images_per_s"):
        axis.axhline(run["raw_images_per_s"], color=colour, linestyle="--", alpha=0.7,
                     label=f"{name} raw model, batch {run.get('raw_best_batch_size')}: {run['raw_images_per_s']:.0f}/s")
    if run.get("pipeline_images_per_s"):
        pipeline_ips = run["pipeline_images_per_s"]
        axis.axhline(pipeline_ips, color=colour, linestyle="-.", alpha=0.7,
                     label=f"{name} decode+model, no server: {pipeline_ips:.0f}/s")
        if target:
            axis.axhline(PIPELINE_TARGET * pipeline_ips, color=colour, linestyle=":", alpha=0.5,
                         label=f"{PIPELINE_TARGET} x that (target)")
    for c, value, level in zip(concurrency, throughput, levels.values(), strict=True):
        axis.annotate(f"{value:.0f}" + (f"\n{level['errors']} err" if level["errors"] else ""),
                      (c, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)


def _plot_latency(axis, run: dict, colour: str, first: bool) -> None:
    """p50 (and for the main run p99) against concurrency, with the model + decode floor at c=1."""
    levels, name = run["per_concurrency"], run.get("runtime") or "gateway"
    concurrency = [int(c) for c in levels]
    p50 = [level["p50_ms"] if level["p50_ms"] is not None else math.nan for level in levels.values()]
    axis.plot(concurrency, p50, "o-", color=colour, label=f"p50 on {name}")
    if first:
        p99 = [level["p99_ms"] if level["p99_ms"] is not None else math.nan for level in levels.values()]
        axis.plot(concurrency, p99, "s--", color="tab:orange", label=f"p99 on {name}")
    if run.get("raw_batch1_ms"):
        floor = run["raw_batch1_ms"] + (run.get("decode_ms") or 0.0)
        axis.axhline(floor, color=colour, linestyle="--", alpha=0.6,
                     label=f"{name} model batch 1 + decode: {floor:.1f} ms")
    for c, value in zip(concurrency, p50, strict=True):
        if not math.isnan(value):
            axis.annotate(f"{value:.0f}", (c, value), textcoords="offset points", xytext=(0, -12), ha="center",
                          fontsize=8)
