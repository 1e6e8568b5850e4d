"""Prometheus metrics of both tiers, served at GET /metrics.

Under gunicorn set PROMETHEUS_MULTIPROC_DIR (deploy/gunicorn.conf.py does) so that the counters of all
web processes are summed; queue depth and live workers are read from Redis at scrape time, so every
web server reports the same, true values. A standalone worker serves its own on METRICS_PORT.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from image_gateway import processes
from image_gateway.protocol import memory

# `client`: a client configured in CLIENTS, `default` (API_KEY) or `anonymous`: bounded by the configuration.
REQUESTS = Counter("gateway_requests_total", "Inference requests by status code and client", ["status", "client"])
LATENCY = Histogram("gateway_request_seconds", "End-to-end inference latency by client", ["client"],
                    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RATE_LIMITED = Counter("gateway_rate_limited_total", "Requests refused 429 RATE_LIMITED by client", ["client"])
RESULTS_WAITED = Counter("gateway_results_waited_total", "Results the web tier waited for and received")
CACHE_HITS = Counter("gateway_cache_hits_total", "Requests answered from the result cache")
TIMEOUTS = Counter("gateway_timeouts_total", "Requests that got no result within REQUEST_TIMEOUT")
MODEL_LABELS = ["model", "version"]
BATCH_SIZE = Histogram("gateway_batch_size", "Jobs per predict call", MODEL_LABELS,
                       buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256))
INFERENCE = Histogram("gateway_inference_seconds", "Model time per batch", MODEL_LABELS,
                      buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
# CPU seconds of the two steps every image pays, timed on their own threads (time.thread_time): bench
# subtracts them from the process' CPU to get what the serving path itself costs per image.
MODEL_CPU = Counter("gateway_model_cpu_seconds_total", "CPU seconds of predict calls, on their threads", MODEL_LABELS)
DECODE_CPU = Counter("gateway_decode_cpu_seconds_total", "CPU seconds decoding and resizing images (web tier)")
EXPIRED = Counter("gateway_jobs_expired_total", "Jobs dropped by a worker because their deadline passed",
                  MODEL_LABELS)

WORKER_METRICS = (BATCH_SIZE, INFERENCE, MODEL_CPU, EXPIRED)


def count_request(status: int, client: str, elapsed_s: float) -> None:
    REQUESTS.labels(str(status), client).inc()
    LATENCY.labels(client).observe(elapsed_s)


class QueueCollector:
    """Gauges read from Redis when scraped: queue depth, live workers and shard of every model version."""

    def __init__(self, router):
        self.router = router

    def collect(self):
        labels = ["model", "version"]
        depth = GaugeMetricFamily("gateway_queue_depth", "Jobs waiting in the model's queue", labels=labels)
        live = GaugeMetricFamily("gateway_live_workers", "Workers with a fresh heartbeat", labels=labels)
        shard = GaugeMetricFamily("gateway_queue_shard", "1 for the Redis node (host:port) holding the queue",
                                  labels=[*labels, "shard"])
        try:
            for versions in self.router.view().values():
                for served in versions.values():
                    depth.add_metric([served.name, served.version], served.queue.depth())
                    live.add_metric([served.name, served.version], served.live_workers)
                    shard.add_metric([served.name, served.version, served.queue.shard()], 1)
        except Exception:  # a scrape while Redis is down still returns the process metrics
            return
        yield depth
        yield live
        yield shard
        yield from redis_memory(self.router.client)


def redis_memory(client):
    """Redis memory against its limit, per master (host:port, never the URL): nothing when INFO fails."""
    try:
        shards = memory.usage(client)
    except Exception:  # refused by an ACL without +info, or Redis down: the other metrics still count
        return
    used = GaugeMetricFamily("gateway_redis_used_memory_bytes", "Redis used_memory (INFO memory)", labels=["shard"])
    limit = GaugeMetricFamily("gateway_redis_maxmemory_bytes", "Redis maxmemory; 0: no limit", labels=["shard"])
    for node, info in shards.items():
        used.add_metric([node], info["used_memory"])
        limit.add_metric([node], info["maxmemory"])
    yield used
    yield limit


class WorkerChildMetrics:
    """The worker metrics of the embedded default's child process, read from its loopback port when
    scraped (nothing while it restarts)."""

    def __init__(self, url: str):
        self.url = url
        self.names = {family.name for metric in WORKER_METRICS for family in metric.describe()}

    def describe(self):
        return []

    def collect(self):
        status, body = processes.http_get(self.url, timeout_s=2.0)
        if status == 200:
            yield from (family for family in text_string_to_metric_families(body.decode())
                        if family.name in self.names)


def include_worker_child(url: str) -> None:
    """This process runs no worker: its /metrics shows the child's worker metrics instead of its own zeros."""
    from prometheus_client import REGISTRY
    for metric in WORKER_METRICS:
        REGISTRY.unregister(metric)
    REGISTRY.register(WorkerChildMetrics(url))


def render(queue_collector: QueueCollector, multiproc_dir: str | None) -> tuple[bytes, str]:
    """The Prometheus text of this process (or of all gunicorn processes sharing PROMETHEUS_MULTIPROC_DIR)
    plus the queue gauges."""
    registry = CollectorRegistry()
    if multiproc_dir:
        multiprocess.MultiProcessCollector(registry, multiproc_dir)
    else:
        from prometheus_client import REGISTRY
        registry = REGISTRY
    body = generate_latest(registry) + generate_latest(_single(queue_collector))
    return body, CONTENT_TYPE_LATEST


def _single(collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
