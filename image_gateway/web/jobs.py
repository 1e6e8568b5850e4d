"""Queue a job for a served model version and wait for its result: what every route shares.

Nothing here reads Flask's request context: a route builds one `Call` (envelope.current_call) and
passes it down; the task feeder builds its own for each unit it runs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from image_gateway import errors, imaging, metrics, protocol
from image_gateway.errors import GatewayError
from image_gateway.web.resources import Gateway
from image_gateway.web.routing import Served


@dataclass(frozen=True)
class Call:
    """One request's (or one task unit's) context on its way to the queues."""
    gw: Gateway
    trace_id: str
    deadline: float             # time.time() by which the answer is due; it starts when the request arrives
    bulk: bool = False          # task work: queued behind interactive requests

    @property
    def config(self):
        return self.gw.config


def model_input(call: Call, data: bytes, spec) -> tuple[np.ndarray, dict]:
    """A classifier's square, or a detector's working image with what maps its boxes back; 504 TIMEOUT
    instead when the request's deadline has passed (a request with many images stops decoding)."""
    config = call.config
    if time.time() >= call.deadline:
        raise GatewayError(errors.TIMEOUT, f"no result within {config.request_timeout:g} s (still decoding)")
    started = time.thread_time()
    try:
        if spec.kind == "detector":
            image = imaging.decode_image(data, max_pixels=config.max_image_pixels, deadline=call.deadline)
            return imaging.working_image(image, config.detect_max_side)
        return imaging.prepare_image(data, spec, max_pixels=config.max_image_pixels, deadline=call.deadline), {}
    finally:
        metrics.DECODE_CPU.inc(time.thread_time() - started)


def new_job(call: Call, served: Served, array: np.ndarray, top_k: int, params: dict | None = None,
            cache_key: str | None = None, job_id: str | None = None) -> protocol.Job:
    return protocol.Job(id=job_id or protocol.new_job_id(), model=served.name, version=served.version,
                        deadline=call.deadline, array=protocol.to_wire(array, call.config.wire_dtype), top_k=top_k,
                        trace_id=call.trace_id, cache_key=cache_key, params=params or {})


def refuse_when_full(call: Call, depth: int) -> None:
    """503 SERVER_BUSY before any decoding when the queue is at its limit: a refusal costs almost nothing.
    (The enqueue checks again, atomically.)"""
    if depth >= call.config.queue_limit:
        raise busy(call)


def submit(call: Call, served: Served, job: protocol.Job) -> protocol.Job:
    """Queue the job, or 503 SERVER_BUSY at once when its queue is full."""
    config = call.config
    if not served.queue.enqueue(job, config.queue_limit, call.bulk, config.enqueue_replicas):
        raise busy(call)
    return job


def busy(call: Call) -> GatewayError:
    config = call.config
    return GatewayError(errors.SERVER_BUSY, f"{config.queue_limit} requests are already waiting",
                        {"Retry-After": str(config.retry_after)})


def wait(call: Call, served: Served, job: protocol.Job, step: str = "") -> protocol.Result:
    """The job's result by its deadline: 504 TIMEOUT otherwise (naming the step of a pipeline)."""
    result = served.queue.wait_result(job.id, job.deadline - time.time())
    if result is None:
        metrics.TIMEOUTS.inc()
        where = f" at {step}" if step else ""
        raise GatewayError(errors.TIMEOUT, f"no result within {call.config.request_timeout:g} s{where}")
    metrics.RESULTS_WAITED.inc()
    return result


def output(call: Call, served: Served, job: protocol.Job) -> dict:
    """The job's answer fields; a worker-side error is raised as its own code."""
    result = wait(call, served, job)
    if not result.success:
        raise GatewayError(errors.by_code(result.error["code"]), result.error["message"])
    return result.output
