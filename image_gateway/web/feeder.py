"""The task feeder: every web process runs one; for each task whose lease it holds, it decodes and
queues the task's images a window at a time on the bulk queues, waits for the answers and stores them.

At most TASK_WINDOW units are in flight per process (decoded arrays in Redis are bounded by it, not by
the task's size). A feeder that dies stops renewing its leases; after TASK_LEASE_S another web
process takes the task over and feeds again what the dead one had in flight.
"""
from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import redis
from flask import Flask

from image_gateway import errors, protocol
from image_gateway.clients import Route
from image_gateway.errors import GatewayError
from image_gateway.web.jobs import Call, model_input, new_job, output, submit
from image_gateway.web.plan_runner import run_plan
from image_gateway.web.resources import Gateway
from image_gateway.web.uploads import Upload, fetch_url

log = logging.getLogger("gateway.tasks")


class Feeder:
    def __init__(self, app: Flask, store: protocol.TaskStore, window: int, lease_s: float):
        self.app = app
        self.store = store
        self.id = f"feeder-{uuid.uuid4().hex[:12]}"
        self.lease_ms = int(lease_s * 1000)
        self.slots = threading.BoundedSemaphore(window)
        self.pool = ThreadPoolExecutor(window, thread_name_prefix="task-unit")
        self.woken = threading.Event()
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="task-feeder", daemon=True)

    def start(self) -> Feeder:
        self.thread.start()
        return self

    def wake(self) -> None:
        self.woken.set()

    def stop(self, wait_s: float = 0.0) -> None:
        """Stop feeding; with wait_s, wait that long for the feeder's thread to end (before its Redis goes)."""
        self.stopping.set()
        self.woken.set()
        self.pool.shutdown(wait=False, cancel_futures=True)
        if wait_s and self.thread.is_alive():
            self.thread.join(wait_s)

    def _run(self) -> None:
        while not self.stopping.is_set():
            pause = min(0.5, self.lease_ms / 3000)
            try:
                for task_id in self.store.active():
                    self._feed(task_id)
            except redis.RedisError as exc:   # Redis down: the tasks wait in Redis; try again later
                if self.stopping.is_set():    # stopped meanwhile: its Redis may be gone already, nothing to say
                    return
                log.warning("task feeder: redis unavailable: %s", exc)
                pause = 5.0
            except Exception:                 # a bug: keep the feeder alive, try again shortly
                log.exception("task feeder step failed")
            self.woken.wait(pause)
            self.woken.clear()

    def _feed(self, task_id: str) -> None:
        """Renew or take the lease, then fill every free slot with a unit of this task."""
        if not self.store.hold_lease(task_id, self.id, self.lease_ms):
            return
        meta = self.store.meta(task_id)
        if meta is None or meta["state"] != "RUNNING":
            return
        if float(meta["expires_at"]) < time.time():
            self.store.retire(task_id, "EXPIRED")
            return
        while not self.stopping.is_set() and self.slots.acquire(blocking=False):
            unit = self.store.take(task_id, self.id)
            if unit is None:
                self.slots.release()
                return
            self.pool.submit(self._run_unit, task_id, unit, meta)

    def _run_unit(self, task_id: str, unit: str, meta: dict) -> None:
        try:
            result = run_unit(self.app.extensions["gateway"], task_id, unit, meta)
            self.store.finish(task_id, unit, result)
        except Exception:          # Redis down mid-unit: the next lease holder feeds it again
            if not self.stopping.is_set():
                log.exception("task %s unit %s failed", task_id, unit)
        finally:
            self.slots.release()
            self.woken.set()


def run_unit(gw: Gateway, task_id: str, unit: str, meta: dict) -> dict:
    """One image through one model or pipeline: the result as a task reports it."""
    index_text, target = unit.split("/", 1)
    index = int(index_text)
    options = json.loads(meta["options"])
    head = {"index": index, "filename": json.loads(meta["filenames"])[index],
            **({"type": options["type"]} if "type" in options else {})}
    try:
        upload = Upload(unit_image(gw, task_id, index, meta), options["top_k"], max_frames=options.get("max_frames"))
        return {**head, "success": True, **answer(gw, upload, target)}
    except GatewayError as exc:
        pipeline = target.startswith("pipeline:")
        return {**head, **({"pipeline": target.split(":", 1)[1]} if pipeline else {"model": target.split("@")[0]}),
                "success": False, "error": {"code": exc.code, "message": exc.message}}


def unit_image(gw: Gateway, task_id: str, index: int, meta: dict) -> bytes:
    """The image of a unit: as uploaded, or fetched now from its URL through the SSRF guard, its bytes
    counted against MAX_TASK_BYTES (a window of units at a time: never the whole task in memory)."""
    url = json.loads(meta.get("urls", "{}")).get(str(index))
    if url is None:
        data = gw.tasks.image(task_id, index)
        if data is None:
            raise GatewayError(errors.TASK_NOT_FOUND, "the image is gone (task cancelled or expired)")
        return data
    data = fetch_url(url, gw.config)
    if gw.tasks.count_bytes(task_id, len(data)) > gw.config.max_task_bytes:
        raise GatewayError(errors.PAYLOAD_TOO_LARGE, f"the task's uploads and fetched images passed "
                           f"{gw.config.max_task_bytes} bytes (MAX_TASK_BYTES)")
    return data


def answer(gw: Gateway, upload, target: str) -> dict:
    """The fields a /predict (or pipeline) answer would carry, queued as bulk work. Each unit has a
    trace id of its own: the task's id is the client's capability to read its results, not a log field."""
    call = Call(gw, uuid.uuid4().hex, time.time() + gw.config.request_timeout, bulk=True)
    if target.startswith("pipeline:"):
        name = target.split(":", 1)[1]
        return {"pipeline": name, **run_plan(call, gw.plans[name], upload)}
    route = Route.from_target(target)            # a model, pinned or split by a client's route: model@...
    served = gw.router.resolve(route.model, route.version_for(upload.data))
    array, params = model_input(call, upload.data, served.spec)
    job = submit(call, served, new_job(call, served, array, upload.top_k, params))
    return {"model": served.name, "version": served.version, **output(call, served, job)}
