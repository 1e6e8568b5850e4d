"""Every model version one worker process serves, kept in step with MODELS and MODEL_REPOSITORY.

A new version is loaded and warmed in a background thread while the others keep serving, then
announced; a removed one is withdrawn from the catalog, its queue drained, then unloaded; a version
that fails to load is announced UNAVAILABLE with the reason and retried only when its files change.
The repository is polled every REPOSITORY_POLL_S: a scan is a few directory reads, and a poll also
sees changes that inotify misses (network filesystems, bind mounts).
"""
from __future__ import annotations

import gc
import logging
import os
import re
import threading
import time

import redis

from image_gateway import errors, models, protocol
from image_gateway import settings as settings_module
from image_gateway.models.repository import FORMAT_RUNTIMES, VersionDir, scan, version_spec, without_folder
from image_gateway.models.spec import OCR_MODELS
from image_gateway.settings import Settings
from image_gateway.worker.loop import WorkerGroup

log = logging.getLogger("gateway.worker")
Key = tuple[str, str]   # (model name, version)


class ModelHost:
    def __init__(self, config: Settings, client: redis.Redis, only: str | None = None):
        self.config = config
        self.client = client
        self.only = only                                    # `classify_worker.py --model NAME`
        self.catalog = protocol.Catalog(client, config.key_prefix)
        self.groups: dict[Key, WorkerGroup] = {}
        self.busy: set[Key] = set()                         # loading or retiring right now
        self.failed: dict[Key, tuple] = {}                  # broken version -> its files' signature
        self.lock = threading.Lock()
        self.stopping = threading.Event()

    def start(self) -> ModelHost:
        """Load what is configured now (the caller waits), then follow the repository."""
        for thread in self.reconcile():
            thread.join()
        threading.Thread(target=self._watch, name="repository-watch", daemon=True).start()
        return self

    @property
    def threads(self) -> list[threading.Thread]:
        return [thread for group in list(self.groups.values()) for thread in group.threads]

    def wanted(self) -> dict[Key, VersionDir | None]:
        """What this process should serve: built-ins as version 1, and every repository version."""
        builtins = settings_module.served_builtins(self.config)
        wanted: dict[Key, VersionDir | None] = {
            (models.get_spec(name, labels_path=self.config.model_labels).name, "1"): None
            for name in builtins if self.only in (None, name)}
        wanted.update(scan(self.config.model_repository, self.only))
        return wanted

    def reconcile(self) -> list[threading.Thread]:
        """Start loading what is new and retiring what is gone; the threads started."""
        wanted = self.wanted()
        started = []
        with self.lock:
            for key, source in wanted.items():
                if key not in self.groups and key not in self.busy and not self._still_broken(key, source):
                    started.append(self._spawn(self._load, key, source))
            for key in [key for key in self.groups if key not in wanted and key not in self.busy]:
                started.append(self._spawn(self._retire, key))
            for key in [key for key in self.failed if key not in wanted]:
                del self.failed[key]
                self.catalog.withdraw(*key)
        return started

    def _still_broken(self, key: Key, source: VersionDir | None) -> bool:
        return key in self.failed and (source is None or self.failed[key] == source.signature)

    def _spawn(self, target, *args) -> threading.Thread:
        self.busy.add(args[0])
        thread = threading.Thread(target=self._then_idle, args=(target, *args), name=f"{target.__name__}-{args[0]}",
                                  daemon=True)
        thread.start()
        return thread

    def _then_idle(self, target, key: Key, *args) -> None:
        try:
            target(key, *args)
        finally:
            with self.lock:
                self.busy.discard(key)

    def _watch(self) -> None:
        while not self.stopping.wait(self.config.repository_poll_s):
            try:
                self.reconcile()
            except Exception:     # a scan error (folder vanished mid-scan) must not end the watch
                log.exception("repository scan failed")

    # ---------------------------------------------------------------------------- load, retire
    def _load(self, key: Key, source: VersionDir | None) -> None:
        name, version = key
        self._announce(key, source, protocol.catalog.LOADING)
        try:
            classifier = self._load_model(name, source)
            group = WorkerGroup(self.config, self.client, classifier, version).start()
            if not group.wait_warm(self.config.request_timeout * 6):
                raise models.ModelError("warm-up did not finish")
        except Exception as exc:
            log.error("model %s version %s is UNAVAILABLE: %s", name, version, exc)
            self.failed[key] = source.signature if source else ()
            self._announce(key, source, protocol.catalog.UNAVAILABLE, f"{type(exc).__name__}: {exc}")
            return
        self.groups[key] = group
        runtime = getattr(classifier, "runtime", "tensorflow" if self.config.runtime != "jax" else "jax")
        self._announce(key, source, protocol.catalog.READY, spec=classifier.spec, runtime=runtime)
        log.info("serving model %s version %s on %s", name, version, runtime)

    def _load_model(self, name: str, source: VersionDir | None):
        """The model on RUNTIME: for a built-in classifier LiteRT or ONNX Runtime (`auto`: the faster that gives
        the same answers, else TensorFlow); a repository .keras on LiteRT where it converts, else Keras."""
        config = self.config
        if source is not None and source.format != "keras":     # model.onnx / model.tflite: their own runtime
            return models.load_repository_version(source, max(1, config.model_threads))
        if source is None and name in OCR_MODELS:                # rapidocr's ONNX files: ONNX Runtime
            return models.load_ocr_model(name, max(1, config.model_threads))
        int8 = source is None and models.get_spec(name).precision == "int8"   # exists only as a LiteRT file
        if not int8 and (config.runtime in ("tensorflow", "jax")
                         or (source is None and models.get_spec(name).kind != "classifier")):
            return self._load_keras(name, source)        # the detector stays on TensorFlow
        from image_gateway.models import litert, runtime_choice
        cache_dir, fallback = os.path.expanduser(config.litert_cache_dir), config.runtime != "litert"
        if source is None:       # LiteRT or its ONNX twin, by RUNTIME (models/runtime_choice.py)
            return runtime_choice.load_builtin(name, runtime_choice.options_from(config))
        classifier = self._load_keras(name, source)
        digest = "".join(litert.file_digest(str(path)) for path in (source.model_file, source.path / "config.json")
                         if path.is_file())     # config.json's normalisation is inside the converted file
        key = litert.cache_key(classifier.spec, digest)
        try:
            return litert.load_litert(classifier, cache_dir, max(1, config.model_threads), key)
        except (models.ModelError, ImportError) as exc:
            if not fallback:
                raise
            log.warning("%s version %s does not run on LiteRT (%s); using TensorFlow", name, source.version, exc)
            return classifier

    def _load_keras(self, name: str, source: VersionDir | None):
        if source is not None:
            return models.load_repository_version(source)
        return models.load_model(name, weights_path=self.config.model_weights, labels_path=self.config.model_labels)

    def _announce(self, key: Key, source: VersionDir | None, state: str, reason: str = "", spec=None,
                  runtime: str = "") -> None:
        name, version = key
        file_format, resize, precision = source.format if source else "builtin", "center_crop", ""
        try:
            spec = spec or (version_spec(source) if source else models.get_spec(name))
            geometry, resize = (spec.kind, spec.input_size, spec.crop_fraction, spec.resample), spec.resize
            precision = "" if source else spec.precision     # known for built-ins only
        except models.ModelError as exc:
            geometry, reason = ("classifier", 0, 1.0, "bilinear"), reason or str(exc)
        reason = public_reason(without_folder(reason, source) if source else reason)
        runtime = runtime or FORMAT_RUNTIMES.get(file_format, "")
        self.catalog.announce(protocol.Entry(name, version, *geometry, state=state, reason=reason, runtime=runtime,
                                             format=file_format, resize=resize, precision=precision))

    def _retire(self, key: Key) -> None:
        """Withdraw the version, answer what is queued for it, then unload it."""
        name, version = key
        self.catalog.withdraw(name, version)
        group = self.groups[key]
        queue = group.workers[0].queue
        self._drain(queue)
        group.stop(self.config.request_timeout)
        if not set(queue.live_workers(self.config.heartbeat_ttl)) - {w.worker_id for w in group.workers}:
            failed = queue.fail_all(errors.MODEL_VERSION_NOT_FOUND.code,
                                    f"model {name} version {version} was removed", self.config.result_ttl)
            if failed:
                log.warning("answered %d jobs of removed %s version %s", failed, name, version)
        del self.groups[key]
        del group
        gc.collect()
        log.info("unloaded model %s version %s", name, version)

    def _drain(self, queue: protocol.JobQueue) -> None:
        """Until the queue has stayed empty for longer than web servers reuse their catalog view."""
        quiet_s = 2 * self.config.catalog_refresh_s + 0.5
        deadline = time.monotonic() + self.config.request_timeout
        empty_since = None
        while time.monotonic() < deadline and not self.stopping.is_set():
            if queue.depth():
                empty_since = None
            elif time.monotonic() - (empty_since := empty_since or time.monotonic()) >= quiet_s:
                return
            time.sleep(0.1)

    def stop(self, timeout_s: float = 30.0) -> None:
        """Each worker finishes its batch and returns what else it claimed."""
        self.stopping.set()
        for group in list(self.groups.values()):
            group.stop(timeout_s)


def start_workers(config: Settings, only: str | None = None) -> ModelHost:
    """Load the served models (TensorFlow is imported here, in worker processes only) and start."""
    client = protocol.connect(config.redis_url, config.request_timeout, config.redis_cluster)
    return ModelHost(config, client, only).start()


ABSOLUTE_PATH = re.compile(r"(?:/[^/\s:'\"()]+)+/([^/\s:'\"()]+)")
MAX_REASON = 300


def public_reason(reason: str) -> str:
    """What /v1/models and MODEL_UNAVAILABLE may show: no folders (a path is cut to its file name), at
    most MAX_REASON characters. The worker's log keeps the whole message."""
    reason = ABSOLUTE_PATH.sub(r"\1", reason)
    return reason if len(reason) <= MAX_REASON else reason[:MAX_REASON - 3] + "..."
