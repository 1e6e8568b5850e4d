"""The Open Inference Protocol (KServe v2), its REST part: what Triton, KServe and MLServer clients speak.

    GET  /v2                                    server metadata (extensions: binary_tensor_data, classification)
    GET  /v2/health/live, /v2/health/ready      200 when live / ready, 400 when not (the protocol's 4xx)
    GET  /v2/models/<name>[/versions/<v>]       model metadata: one BYTES input, the kind's outputs
    GET  /v2/models/<name>[/versions/<v>]/ready
    POST /v2/models/<name>[/versions/<v>]/infer

The input `image` is BYTES of shape [N]: each element one encoded image file. In the JSON form an
element is the file's base64 string (JSON cannot carry raw bytes); with the binary tensor data
extension (header Inference-Header-Content-Length) it is the raw file, length-prefixed like every
BYTES element (a lone raw file without the prefix is accepted too). Classifiers answer FP32
`probabilities` [N, classes], the whole softmax; `"parameters": {"classification": k}` on that output
answers BYTES "score:index:label" strings [N, k] instead, as Triton does. Detectors answer `boxes`
FP32 [N, M, 4] (x_min, y_min, x_max, y_max in original pixels), `scores` FP32 [N, M], `labels` BYTES
[N, M] and `count` INT32 [N], padded to the image with most detections (M), as TF detection models do.

Every image is a job on the same queues as /predict (batched together, one deadline), with the same
limits, API key and request metrics. Errors answer {"error": "..."} with the status /predict uses.
"""
from __future__ import annotations

import base64
import binascii
import json
import logging
import math
import struct
import time
from dataclasses import dataclass

import numpy as np
import redis
from flask import Blueprint, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from image_gateway import errors, metrics, protocol
from image_gateway.errors import GatewayError
from image_gateway.protocol.catalog import READY
from image_gateway.web import access
from image_gateway.web.envelope import current_call
from image_gateway.web.jobs import model_input, new_job, output, refuse_when_full, submit
from image_gateway.web.resources import gateway
from image_gateway.web.routing import Served, newest

log = logging.getLogger("gateway.v2")
bp = Blueprint("v2", __name__)
HEADER_LENGTH = "Inference-Header-Content-Length"
IMAGE_INPUT = "image"
ALL_CLASSES = 1 << 20           # a top_k past any model's classes: a worker answers every class, sorted
CLASSIFIER_OUTPUTS = ("probabilities",)
DETECTOR_OUTPUTS = ("boxes", "scores", "labels", "count")
EXTENSIONS = ["binary_tensor_data", "classification"]


@dataclass(frozen=True)
class Tensor:
    name: str
    datatype: str                   # FP32, INT32 or BYTES
    values: np.ndarray              # BYTES: an object array of bytes

    def json_data(self) -> list:
        flat = self.values.reshape(-1)
        return [item.decode() for item in flat] if self.datatype == "BYTES" else flat.tolist()

    def binary_data(self) -> bytes:
        if self.datatype == "BYTES":
            return b"".join(struct.pack("<I", len(item)) + item for item in self.values.reshape(-1))
        return self.values.astype("<f4" if self.datatype == "FP32" else "<i4").tobytes()


def bad_request(message: str) -> GatewayError:
    return GatewayError(errors.INVALID_PARAMETER, message)


# ------------------------------------------------------------------------------ errors and metrics
@bp.errorhandler(GatewayError)
def gateway_error(exc: GatewayError):
    return jsonify({"error": exc.message}), exc.status, exc.headers


@bp.errorhandler(HTTPException)
def http_error(exc: HTTPException):
    if exc.code == 413:
        return jsonify({"error": f"the request body is larger than {gateway().config.max_upload_bytes} bytes"}), 413
    return jsonify({"error": exc.description or exc.name}), exc.code or 500


@bp.errorhandler(redis.RedisError)
def redis_error(exc: redis.RedisError):
    log.warning("redis unavailable: %s", exc, extra={"trace_id": g.get("trace_id")})
    return jsonify({"error": errors.QUEUE_UNAVAILABLE.description}), 503, {
        "Retry-After": str(gateway().config.retry_after)}


@bp.errorhandler(Exception)
def unexpected_error(exc: Exception):
    log.exception("unexpected error", extra={"trace_id": g.get("trace_id")})
    return jsonify({"error": errors.INTERNAL_ERROR.description}), 500


@bp.after_request
def count_inference(response: Response) -> Response:
    """Inference requests count in the same request metrics as /predict."""
    if request.endpoint == "v2.infer" and "started" in g:
        client = g.client.name if "client" in g else "anonymous"
        metrics.count_request(response.status_code, client, time.perf_counter() - g.started)
    return response


# ---------------------------------------------------------------------------------- server and models
@bp.get("/v2")
def server_metadata():
    return jsonify({"name": "image-gateway", "version": "2", "extensions": EXTENSIONS})


@bp.get("/v2/health/live")
def live():
    return jsonify({"live": True})


@bp.get("/v2/health/ready")
def ready():
    """Ready when Redis answers and every served model has a READY version."""
    router = gateway().router
    try:
        view = router.view()
    except redis.RedisError:
        return jsonify({"ready": False}), 400
    is_ready = bool(view) and all(any(s.state == READY for s in versions.values()) for versions in view.values())
    return jsonify({"ready": is_ready}), 200 if is_ready else 400


def served_version(name: str, version: str | None) -> tuple[Served, dict[str, Served]]:
    """The model version a metadata or ready request names (no 503: a failed version still has metadata)."""
    versions = gateway().router.versions_of(name)
    if version is None:
        return newest(versions), versions
    if version not in versions:
        raise GatewayError(errors.MODEL_VERSION_NOT_FOUND, f"model {name!r} has no version {version!r}; "
                           f"versions: {', '.join(sorted(versions, key=int))}")
    return versions[version], versions


@bp.get("/v2/models/<name>")
@bp.get("/v2/models/<name>/versions/<version>")
def model_metadata(name: str, version: str | None = None):
    served, versions = served_version(name, version)
    return jsonify({"name": name, "versions": sorted(versions, key=int),
                    "platform": f"image-gateway_{served.spec.kind}",
                    "inputs": [{"name": IMAGE_INPUT, "datatype": "BYTES", "shape": [-1]}],
                    "outputs": output_metadata(served)})


def output_metadata(served: Served) -> list[dict]:
    if served.spec.kind == "detector":
        return [{"name": "boxes", "datatype": "FP32", "shape": [-1, -1, 4]},
                {"name": "scores", "datatype": "FP32", "shape": [-1, -1]},
                {"name": "labels", "datatype": "BYTES", "shape": [-1, -1]},
                {"name": "count", "datatype": "INT32", "shape": [-1]}]
    return [{"name": "probabilities", "datatype": "FP32", "shape": [-1, len(labels_of(served)) or -1]}]


@bp.get("/v2/models/<name>/ready")
@bp.get("/v2/models/<name>/versions/<version>/ready")
def model_ready(name: str, version: str | None = None):
    served, _ = served_version(name, version)
    is_ready = served.state == READY
    return jsonify({"name": name, "version": served.version, "ready": is_ready}), 200 if is_ready else 400


def labels_of(served: Served) -> tuple[str, ...]:
    """The class names where the web tier knows them (built-ins); a repository model's come from its worker."""
    builtin = gateway().router.builtins.get(served.name)
    return served.spec.labels or (builtin.labels if builtin else ())


# ------------------------------------------------------------------------------------------ inference
@bp.post("/v2/models/<name>/infer")
@bp.post("/v2/models/<name>/versions/<version>/infer")
def infer(name: str, version: str | None = None):
    call = current_call()
    gw = call.gw
    g.job_id = protocol.new_job_id()
    access.permit("model", name)
    header, tail = read_request()
    images = image_elements(header, tail, gw.config.max_batch_images)
    served = gw.router.resolve(name, version)
    outputs = requested_outputs(header, served.spec.kind)
    refuse_when_full(call, served.queue.depth() + len(images) - 1)     # room for every image, before decoding
    inputs = []
    for index, data in enumerate(images):
        try:
            inputs.append(model_input(call, data, served.spec))
        except GatewayError as exc:
            raise GatewayError(exc.error, f"input 'image' element {index}: {exc.message}", exc.headers) from None
    top_k = len(labels_of(served)) or ALL_CLASSES if served.spec.kind == "classifier" else 1
    jobs = []
    try:
        for array, params in inputs:
            jobs.append(submit(call, served, new_job(call, served, array, top_k, params)))
        answers = [output(call, served, job) for job in jobs]
    except GatewayError:
        served.queue.withdraw(jobs)     # nobody will wait for the rest
        raise
    tensors = detector_tensors(answers) if served.spec.kind == "detector" else classifier_tensors(answers, outputs)
    return respond(header, served, [(tensors[out_name], binary) for out_name, (binary, _) in outputs.items()])


def read_request() -> tuple[dict, bytes]:
    """The JSON inference header and the binary data after it (binary tensor data extension)."""
    if request.headers.get("Content-Encoding", "identity").lower() != "identity":
        raise bad_request("compressed requests are not supported: send the body without Content-Encoding")
    body = request.get_data(cache=False)
    raw_length = request.headers.get(HEADER_LENGTH)
    length = len(body)
    if raw_length is not None:
        length = int(raw_length) if raw_length.isascii() and raw_length.isdigit() and len(raw_length) <= 15 else -1
        if not 0 < length <= len(body):
            raise bad_request(f"{HEADER_LENGTH} must be the byte length of the JSON header, at most the body's")
    try:
        header = json.loads(body[:length])
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request("the inference request header is not valid JSON") from None
    if not isinstance(header, dict):
        raise bad_request("the inference request must be a JSON object")
    return header, body[length:]


def image_elements(header: dict, tail: bytes, max_images: int) -> list[bytes]:
    """The encoded image files of the one BYTES input `image`, from binary data or base64 JSON; at most
    `max_images` (MAX_BATCH_IMAGES), counted from the shape before any element is read."""
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise bad_request(f"expected one input, {IMAGE_INPUT!r}")
    tensor = inputs[0]
    if tensor.get("name") != IMAGE_INPUT:
        raise bad_request(f"unexpected inference input {tensor.get('name')!r}: the model's input is {IMAGE_INPUT!r}")
    if tensor.get("datatype") != "BYTES":
        raise bad_request(f"input {IMAGE_INPUT!r} must be BYTES (encoded image files), not {tensor.get('datatype')!r}")
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not shape or not all(type(dim) is int and dim >= 0 for dim in shape):
        raise bad_request(f"input {IMAGE_INPUT!r} needs a shape: a list of non-negative integers, such as [1]")
    count = math.prod(shape)
    if count > max_images:
        raise GatewayError(errors.BATCH_TOO_LARGE, f"{count} images: one inference request takes at most "
                           f"{max_images} (MAX_BATCH_IMAGES)")
    parameters = tensor.get("parameters") if isinstance(tensor.get("parameters"), dict) else {}
    size = parameters.get("binary_data_size")
    if size is not None:
        if type(size) is not int or size != len(tail):
            raise bad_request(f"binary_data_size of {IMAGE_INPUT!r} does not match the binary data sent")
        elements = split_bytes(tail, count)
    elif "data" in tensor:
        elements = [base64_element(item) for item in flatten(tensor["data"])]
    else:
        raise bad_request(f"input {IMAGE_INPUT!r} has neither `data` nor binary data")
    if count == 0 or len(elements) != count:
        raise bad_request(f"input {IMAGE_INPUT!r} has {len(elements)} elements for shape {shape}")
    if not all(elements):
        raise GatewayError(errors.EMPTY_IMAGE, f"an element of {IMAGE_INPUT!r} is empty")
    return elements


def flatten(data) -> list:
    """The elements of a nested list, in row-major order."""
    items, pending = [], [data]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            pending.extend(reversed(item))
        else:
            items.append(item)
    return items


def base64_element(item) -> bytes:
    if not isinstance(item, str):
        raise bad_request(f"in JSON, each element of {IMAGE_INPUT!r} is the image file as a base64 string")
    try:
        return base64.b64decode(item, validate=True)
    except (binascii.Error, ValueError):
        raise GatewayError(errors.INVALID_BASE64, f"an element of {IMAGE_INPUT!r} is not valid base64") from None


def split_bytes(blob: bytes, count: int) -> list[bytes]:
    """BYTES elements as the protocol serialises them (4-byte little-endian length, then the bytes);
    one element sent as the bare file is taken whole."""
    elements, at = [], 0
    while at + 4 <= len(blob) and len(elements) < count:
        (length,) = struct.unpack_from("<I", blob, at)
        if at + 4 + length > len(blob):
            break
        elements.append(blob[at + 4:at + 4 + length])
        at += 4 + length
    if at == len(blob) and len(elements) == count:
        return elements
    if count == 1:
        return [blob]
    raise bad_request(f"the binary data of {IMAGE_INPUT!r} is not {count} length-prefixed elements")


def requested_outputs(header: dict, kind: str) -> dict[str, tuple[bool, int | None]]:
    """Output name -> (binary data or JSON, the classification extension's k or None)."""
    names = DETECTOR_OUTPUTS if kind == "detector" else CLASSIFIER_OUTPUTS
    parameters = header.get("parameters") if isinstance(header.get("parameters"), dict) else {}
    binary_default = parameters.get("binary_data_output") is True
    asked = header.get("outputs")
    if asked is None:
        return {name: (binary_default, None) for name in names}
    if not isinstance(asked, list) or not all(isinstance(item, dict) for item in asked):
        raise bad_request("`outputs` must be a list of objects with a `name`")
    outputs = {}
    for item in asked:
        if item.get("name") not in names:
            raise bad_request(f"unexpected inference output {item.get('name')!r}: outputs are {', '.join(names)}")
        options = item.get("parameters") if isinstance(item.get("parameters"), dict) else {}
        binary = options.get("binary_data", binary_default) is True
        classes = options.get("classification")
        if classes is not None and (kind == "detector" or type(classes) is not int or classes < 1):
            raise bad_request("`classification` takes a positive integer, on a classifier's probabilities")
        outputs[item["name"]] = (binary, classes)
    return outputs


def classifier_tensors(answers: list[dict], outputs: dict) -> dict[str, Tensor]:
    classes = outputs.get("probabilities", (False, None))[1]
    if classes:
        strings = [[f"{p['probability']:f}:{p['class_id']}:{p['label']}".encode()
                    for p in answer["predictions"][:classes]] for answer in answers]
        return {"probabilities": Tensor("probabilities", "BYTES", np.array(strings, dtype=object))}
    width = max(p["class_id"] for answer in answers for p in answer["predictions"]) + 1
    probabilities = np.zeros((len(answers), width), np.float32)
    for row, answer in enumerate(answers):
        for prediction in answer["predictions"]:
            probabilities[row, prediction["class_id"]] = prediction["probability"]
    return {"probabilities": Tensor("probabilities", "FP32", probabilities)}


def detector_tensors(answers: list[dict]) -> dict[str, Tensor]:
    found = [answer["detections"] for answer in answers]
    most = max(len(detections) for detections in found)
    boxes = np.zeros((len(found), most, 4), np.float32)
    scores = np.zeros((len(found), most), np.float32)
    labels = np.full((len(found), most), b"", dtype=object)
    for row, detections in enumerate(found):
        for column, detection in enumerate(detections):
            boxes[row, column], scores[row, column] = detection["box"], detection["score"]
            labels[row, column] = str(detection["label"]).encode()
    counts = np.array([len(detections) for detections in found], np.int32)
    return {"boxes": Tensor("boxes", "FP32", boxes), "scores": Tensor("scores", "FP32", scores),
            "labels": Tensor("labels", "BYTES", labels), "count": Tensor("count", "INT32", counts)}


def respond(header: dict, served: Served, tensors: list[tuple[Tensor, bool]]) -> Response:
    """JSON, or the JSON header then each binary output's bytes when any output asked for binary data."""
    body = {"model_name": served.name, "model_version": served.version, "outputs": []}
    if isinstance(header.get("id"), str):
        body["id"] = header["id"]
    binary_parts = []
    for tensor, binary in tensors:
        entry = {"name": tensor.name, "datatype": tensor.datatype, "shape": list(tensor.values.shape)}
        if binary:
            binary_parts.append(tensor.binary_data())
            entry["parameters"] = {"binary_data_size": len(binary_parts[-1])}
        else:
            entry["data"] = tensor.json_data()
        body["outputs"].append(entry)
    if not binary_parts:
        return jsonify(body)
    encoded = json.dumps(body).encode()
    return Response(encoded + b"".join(binary_parts), content_type="application/octet-stream",
                    headers={HEADER_LENGTH: str(len(encoded))})
