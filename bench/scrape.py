"""The gateway's Prometheus counters that explain a level, read at the window's edges, and their deltas."""
from __future__ import annotations

import re

from image_gateway import processes

METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")
WATCHED_METRICS = ("gateway_batch_size_sum", "gateway_batch_size_count", "gateway_inference_seconds_sum",
                   "gateway_cache_hits_total", "gateway_timeouts_total", "gateway_jobs_expired_total",
                   "gateway_decode_cpu_seconds_total", "gateway_model_cpu_seconds_total")
STEP_CPU = ("gateway_decode_cpu_seconds_total", "gateway_model_cpu_seconds_total")   # the two steps every image pays


def scrape(url: str) -> dict[str, float]:
    """The gateway's counters that explain a level: batch sizes, model time, cache hits, timeouts."""
    status, body = processes.http_get(url.rstrip("/") + "/metrics", timeout_s=10)
    text = body.decode(errors="replace") if status == 200 else ""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = METRIC_LINE.match(line)
        if match and (match.group(1) in WATCHED_METRICS or match.group(1) == "gateway_batch_size_bucket"):
            le = re.search(r'le="([^"]+)"', match.group(2) or "")     # summed over model and version
            key = match.group(1) + (f'{{le="{le.group(1)}"}}' if le else "")
            try:
                values[key] = values.get(key, 0.0) + float(match.group(3))
            except ValueError:
                pass
    return values


def counters(url: str, names: tuple[str, ...]) -> dict[str, float]:
    """The named metrics of the Prometheus text at `url`/metrics, each summed over its labels ({} when the
    scrape fails)."""
    status, body = processes.http_get(url.rstrip("/") + "/metrics", timeout_s=10)
    values: dict[str, float] = {}
    for line in body.decode(errors="replace").splitlines() if status == 200 else ():
        match = METRIC_LINE.match(line)
        if match and match.group(1) in names:
            values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(3))
    return values


def level_diagnostics(before: dict, after: dict, window_s: float) -> dict:
    """What the counters say about one level: mean batch size, model busy fraction, cache hits ..."""
    delta = {k: after.get(k, 0.0) - before.get(k, 0.0) for k in after}
    batches = delta.get("gateway_batch_size_count", 0.0)
    busy_s = delta.get("gateway_inference_seconds_sum", 0.0)
    out = {"mean_batch_size": round(delta.get("gateway_batch_size_sum", 0.0) / batches, 2) if batches else None,
           "batches": int(batches),
           "model_busy_fraction": round(busy_s / window_s, 3) if after else None,
           "cache_hits": int(delta.get("gateway_cache_hits_total", 0.0)),
           "timeouts": int(delta.get("gateway_timeouts_total", 0.0)),
           "expired": int(delta.get("gateway_jobs_expired_total", 0.0))}
    buckets = {re.search(r'le="([^"]+)"', k).group(1): v for k, v in delta.items()
               if k.startswith("gateway_batch_size_bucket")}
    if buckets:
        out["batch_size_buckets"] = {le: int(v) for le, v in buckets.items()}   # cumulative, as Prometheus counts
    return out
