"""Queue a job for a served model version and wait for its result: what every route shares."""
from __future__ import annotations

import time

import numpy as np
from flask import g

from image_gateway import errors, metrics, protocol
from image_gateway.errors import GatewayError
from image_gateway.web.resources import gateway
from image_gateway.web.routing import Served


def new_job(served: Served, array: np.ndarray, deadline: float, top_k: int, params: dict | None = None,
            cache_key: str | None = None, job_id: str | None = None) -> protocol.Job:
    config = gateway().config
    return protocol.Job(id=job_id or protocol.new_job_id(), model=served.name, version=served.version,
                        deadline=deadline, array=protocol.to_wire(array, config.wire_dtype), top_k=top_k,
                        trace_id=g.trace_id, cache_key=cache_key, params=params or {})


def refuse_when_full(depth: int) -> None:
    """503 SERVER_BUSY before any decoding when the queue is at its limit: a refusal costs almost nothing.
    (The enqueue checks again, atomically.)"""
    if depth >= gateway().config.queue_limit:
        raise busy()


def submit(served: Served, job: protocol.Job, bulk: bool = False) -> protocol.Job:
    """Queue the job, or 503 SERVER_BUSY at once when its queue is full."""
    config = gateway().config
    if not served.queue.enqueue(job, config.queue_limit, bulk, config.enqueue_replicas):
        raise busy()
    return job


def busy() -> GatewayError:
    config = gateway().config
    return GatewayError(errors.SERVER_BUSY, f"{config.queue_limit} requests are already waiting",
                        {"Retry-After": str(config.retry_after)})


def wait(served: Served, job: protocol.Job, step: str = "") -> protocol.Result:
    """The job's result by its deadline: 504 TIMEOUT otherwise (naming the step of a pipeline)."""
    result = served.queue.wait_result(job.id, job.deadline - time.time())
    if result is None:
        metrics.TIMEOUTS.inc()
        where = f" at {step}" if step else ""
        raise GatewayError(errors.TIMEOUT, f"no result within {gateway().config.request_timeout:g} s{where}")
    metrics.RESULTS_WAITED.inc()
    return result
