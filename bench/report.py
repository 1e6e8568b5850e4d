"""The benchmark's result: one dict with every number, its table, its JSON file and its PNG."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

NOISY_CORES = 0.25     # CPU cores used by other processes above which a run is flagged as noisy


def best_raw(raw: dict) -> tuple[int | None, float | None]:
    """(batch size, images/s) of the fastest raw batch size."""
    if not raw:
        return None, None
    batch, row = max(raw.items(), key=lambda item: item[1]["images_per_s"])
    return int(batch), row["images_per_s"]


def build_result(raw: dict, levels: dict, *, raw_batch1_ms: float | None = None, cpu_per_image_ms: dict | None = None,
                 settings: dict | None = None, machine: dict | None = None, **extra) -> dict:
    """The JSON document from the raw rows ({batch: {images_per_s, latency_ms_p50, ...}}) and the
    level summaries ({concurrency: LevelResult.summary()})."""
    raw = {int(k): v for k, v in raw.items()}
    levels = {int(k): v for k, v in sorted(levels.items(), key=lambda item: int(item[0]))}
    best_batch, raw_ips = best_raw(raw)
    if raw_batch1_ms is None and 1 in raw:
        raw_batch1_ms = raw[1].get("latency_ms_p50")
    gateway_ips = max((level["images_per_s"] for level in levels.values()), default=None)
    best_level = max(levels, key=lambda c: levels[c]["images_per_s"]) if levels else None
    result = {
        "raw_images_per_s": _round(raw_ips),
        "raw_best_batch_size": best_batch,
        "raw_batch1_ms": _round(raw_batch1_ms),
        "raw": {str(batch): {"images_per_s": _round(row["images_per_s"]),
                             "ms_per_batch": _round(row.get("latency_ms_p50")),
                             **{k: v for k, v in row.items() if k not in ("images_per_s",)}}
                for batch, row in sorted(raw.items())},
        "gateway_images_per_s": _round(gateway_ips),
        "gateway_best_concurrency": best_level,
        "ratio": _round(gateway_ips / raw_ips, 3) if gateway_ips is not None and raw_ips else None,
        "p50_ms_c1": levels.get(1, {}).get("p50_ms"),
        "p50_over_raw_batch1_ms": (_round(levels[1]["p50_ms"] - raw_batch1_ms)
                                   if 1 in levels and levels[1].get("p50_ms") is not None and raw_batch1_ms else None),
        "per_concurrency": {str(c): level for c, level in levels.items()},
        "p99_ms": {str(c): level.get("p99_ms") for c, level in levels.items()},
        "errors": sum(level.get("errors", 0) for level in levels.values()),
        "errors_by_code": _merge_counts(level.get("errors_by_code", {}) for level in levels.values()),
        "cpu_per_image_ms": cpu_per_image_ms or {},
        "settings": settings or {},
        "machine": machine or {},
    }
    result.update(extra)
    return result


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


def format_table(result: dict) -> str:
    """The human summary printed at the end of a run."""
    lines = [f"{'concurrency':>11} {'images/s':>9} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'errors':>7}"
             f" {'batch':>6} {'model busy':>10} {'cpu ms/img':>10} {'other cores':>11}"]
    for c, level in result["per_concurrency"].items():
        lines.append(f"{c:>11} {_fmt(level['images_per_s'], 9)} {_fmt(level['p50_ms'], 8)}"
                     f" {_fmt(level['p90_ms'], 8)} {_fmt(level['p99_ms'], 8)} {level['errors']:>7}"
                     f" {_fmt(level.get('mean_batch_size'), 6)} {_fmt(level.get('model_busy_fraction'), 10, 2)}"
                     f" {_fmt(level.get('gateway_cpu_ms_per_image'), 10)}"
                     f" {_fmt(level.get('other_processes_cores'), 11, 2)}")
    lines.append("")
    raw_row = f"raw model: {_fmt(result['raw_images_per_s'], 0)} images/s (best, batch {result['raw_best_batch_size']})"
    raw_row += f", batch 1 {_fmt(result['raw_batch1_ms'], 0, 1).strip()} ms"
    lines.append(raw_row)
    lines.append(f"gateway:   {_fmt(result['gateway_images_per_s'], 0)} images/s"
                 f" (best, c={result['gateway_best_concurrency']})"
                 f"  ratio {_fmt(result['ratio'], 0, 3).strip()}  p50 at c=1 {_fmt(result['p50_ms_c1'], 0).strip()} ms"
                 f"  errors {result['errors']}")
    noise = [v for v in [result.get("raw_other_processes_cores")] +
             [level.get("other_processes_cores") for level in result["per_concurrency"].values()] if v is not None]
    if noise and max(noise) > NOISY_CORES:
        lines.append(f"WARNING: other processes used up to {max(noise):.2f} cores during the measurements; "
                     "re-run on a quiet machine before quoting these numbers")
    cpu = result.get("cpu_per_image_ms") or {}
    if cpu:
        stages = ", ".join(f"{k} {v:.2f}" for k, v in cpu.items() if isinstance(v, (int, float)))
        lines.append(f"CPU ms per image: {stages}")
    return "\n".join(lines)


def write_json(result: dict, path: str | os.PathLike) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, sort_keys=False, default=str) + "\n")


def plot(result: dict, path: str | os.PathLike) -> None:
    """Throughput and p50/p99 latency against concurrency, with the raw model as reference lines."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    levels = result["per_concurrency"]
    concurrency = [int(c) for c in levels]
    throughput = [levels[c]["images_per_s"] for c in levels]
    p50 = [levels[c]["p50_ms"] if levels[c]["p50_ms"] is not None else math.nan for c in levels]
    p99 = [levels[c]["p99_ms"] if levels[c]["p99_ms"] is not None else math.nan for c in levels]
    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))

    left.plot(concurrency, throughput, "o-", color="tab:blue", label="gateway")
    if result.get("raw_images_per_s"):
        raw = result["raw_images_per_s"]
        left.axhline(raw, color="tab:red", linestyle="--",
                     label=f"raw model, best batch ({result.get('raw_best_batch_size')}): {raw:.0f}/s")
        left.axhline(0.85 * raw, color="tab:red", linestyle=":", alpha=0.6, label="0.85 x raw (target)")
    for c, value, level in zip(concurrency, throughput, levels.values(), strict=True):
        left.annotate(f"{value:.0f}" + (f"\n{level['errors']} err" if level["errors"] else ""),
                      (c, value), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    left.set(xscale="log", xlabel="concurrent clients (closed loop)", ylabel="images / s",
             title=f"Throughput (ratio {result.get('ratio')})")
    left.set_ylim(bottom=0)
    right.plot(concurrency, p50, "o-", color="tab:green", label="p50")
    right.plot(concurrency, p99, "s--", color="tab:orange", label="p99")
    if result.get("raw_batch1_ms"):
        right.axhline(result["raw_batch1_ms"], color="tab:red", linestyle="--",
                      label=f"raw model, batch 1: {result['raw_batch1_ms']:.1f} ms")
    right.set(xscale="log", yscale="log", xlabel="concurrent clients (closed loop)", ylabel="ms",
              title="Latency per request")
    shown = [v for v in p50 + p99 + [result.get("raw_batch1_ms") or math.nan] if not math.isnan(v)]
    if shown:   # readable 1-2-5 ticks: a log axis over less than a decade would show one label
        ticks = [m * 10 ** e for e in range(-1, 6) for m in (1, 2, 5)
                 if min(shown) / 2 <= m * 10 ** e <= max(shown) * 2]
        right.set_yticks(ticks, [f"{t:g}" for t in ticks])
    for c, value in zip(concurrency, p50, strict=True):
        if not math.isnan(value):
            right.annotate(f"{value:.0f}", (c, value), textcoords="offset points", xytext=(0, -12), ha="center",
                           fontsize=8)
    for axis in (left, right):
        axis.set_xticks(concurrency, [str(c) for c in concurrency])
        axis.minorticks_off()
        axis.yaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        axis.grid(True, alpha=0.3)
        axis.legend(fontsize=8, loc="best")
    machine, settings = result.get("machine", {}), result.get("settings", {})
    figure.suptitle(f"{settings.get('model', '')}  batch {settings.get('batch_size', '')}"
                    f"  wire {settings.get('wire_dtype', '')}"
                    f"  |  {machine.get('cpu_model', '')} x{machine.get('nproc', '')}  |  {machine.get('date', '')}",
                    fontsize=9)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
