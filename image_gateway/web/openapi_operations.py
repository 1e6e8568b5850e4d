"""What web/openapi.py assembles: the schemas, and one operation per (method, route) the app serves.

OPERATIONS is keyed by method and path with the path parameters blanked ("/v1/models/{}/predict"),
so the names the routes give their parameters are the ones documented. Error codes come from
errors.py by name; a code that errors.py does not define (yet) is left out rather than invented.
"""
from __future__ import annotations

import base64
import io
from collections.abc import Callable
from functools import cache

from PIL import Image

from image_gateway import errors
from image_gateway.settings import Settings

DESCRIPTION = """Image recognition over HTTP: classifiers answer ImageNet-style `predictions`, detectors
`detections`. Three interfaces: the native JSON API (`/predict`, `/v1/...`), this document with its
Swagger UI at `/docs`, and the Open Inference Protocol (KServe v2) under `/v2`.

Every failure of the native API is `{"success": false, "id": ..., "error": {"code", "message"}}`;
each operation lists its codes per status. The Open Inference Protocol answers `{"error": "..."}`.
Every response carries `X-Request-ID` (the one you sent, else a new one) and `X-Served-By`; a 503
carries `Retry-After`. When the server sets `API_KEY`, inference needs the header `X-API-Key`."""
TAGS = [{"name": "native", "description": "the gateway's own JSON API"},
        {"name": "v2", "description": "the Open Inference Protocol (KServe v2), as Triton and KServe clients speak it"},
        {"name": "tasks", "description": "many images as one task, worked through in the background"},
        {"name": "operations", "description": "health, readiness, status, metrics and the web page"},
        {"name": "documentation", "description": "this document and its Swagger UI"}]
UPLOAD = ("MISSING_IMAGE", "EMPTY_IMAGE", "INVALID_BASE64", "INVALID_PARAMETER", "INVALID_JSON", "IMAGE_UNREADABLE",
          "UNSUPPORTED_FORMAT", "UNSUPPORTED_MEDIA_TYPE", "IMAGE_TOO_LARGE", "PAYLOAD_TOO_LARGE", "URL_NOT_ALLOWED",
          "URL_FETCH_FAILED", "UNAUTHORIZED", "MODEL_NOT_ALLOWED", "RATE_LIMITED")
QUEUED = ("SERVER_BUSY", "QUEUE_UNAVAILABLE", "TIMEOUT", "INFERENCE_FAILED")
STRING, INTEGER, NUMBER, BOOLEAN = ({"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"})


def ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def obj(required: tuple[str, ...] | str = (), **properties) -> dict:
    required = tuple(required.split()) if isinstance(required, str) else required
    return {"type": "object", "required": list(required), "properties": properties}


def array(items: dict, **extra) -> dict:
    return {"type": "array", "items": items, **extra}


def schemas(config: Settings) -> dict[str, dict]:
    top_k = {"type": "integer", "minimum": 1, "maximum": config.max_top_k,
             "description": f"how many predictions (default {config.top_k})"}
    upload_fields = {"top_k": top_k, "model": {**STRING, "description": "a served model (default: MODEL)"},
                     "version": {**STRING, "description": "a version of the model (default: its newest READY)"},
                     "url": {**STRING, "format": "uri", "description": "fetch the image from this URL instead "
                             "(behind the SSRF guard: URL_INPUT, URL_ALLOWLIST)"},
                     "max_frames": {"type": "integer", "minimum": 1, "description": "a frames pipeline: at most this "
                                    "many frames (lowers the pipeline's own)"}}
    version = obj("version state live_workers", version=STRING, state={"enum": ["READY", "LOADING", "UNAVAILABLE"]},
                  live_workers=INTEGER, reason=STRING, runtime=STRING, format=STRING,
                  precision={"enum": ["fp32", "int8"]})
    return {
        "Error": obj("success id error", success={"const": False}, id={"type": ["string", "null"]},
                     error=obj("code message", code={"enum": [error.code for error in errors.ALL_CODES]},
                               message=STRING)),
        "ProtocolError": obj("error", error=STRING),
        "Prediction": obj("label class_id probability", label=STRING, class_id=INTEGER,
                          probability={"type": "number", "minimum": 0, "maximum": 1}),
        "Detection": obj("label score box", label=STRING, score=NUMBER,
                         box=array(NUMBER, minItems=4, maxItems=4, description="x_min, y_min, x_max, y_max in "
                                   "the original image's pixels"), landmarks={"type": "object"}),
        "Answer": {"description": "a classifier's `predictions` or a detector's `detections`",
                   **obj(predictions=array(ref("Prediction")), detections=array(ref("Detection"))),
                   "oneOf": [{"required": ["predictions"]}, {"required": ["detections"]}]},
        "PredictResponse": {"allOf": [ref("Answer"), obj("success id model version", success={"const": True},
                                                         id=STRING, model=STRING, version=STRING)]},
        "PredictJson": obj(image={**STRING, "contentEncoding": "base64", "description": "the image file, base64 "
                                  "(a data: URL prefix is accepted)"}, **upload_fields),
        "PredictForm": obj(image={**STRING, "format": "binary", "contentMediaType": "application/octet-stream"},
                           **upload_fields),
        "ModelVersion": version,
        "Model": obj("name kind input_size default versions", name=STRING, kind={"enum": ["classifier", "detector"]},
                     input_size=INTEGER, default=BOOLEAN, versions=array(ref("ModelVersion"))),
        "ModelList": obj("models", models=array(ref("Model"))),
        "PipelineList": obj("pipelines", pipelines=array(obj("name description steps", name=STRING,
                                                             description=STRING, steps=array({"type": "object"})))),
        "PipelineResponse": obj("success id pipeline", success={"const": True}, id=STRING, pipeline=STRING,
                                models={"type": "object"}, detections=array({"type": "object"}),
                                texts=array(obj("text score box", text=STRING, score=NUMBER, box=array(
                                    array(NUMBER, minItems=2, maxItems=2), minItems=4, maxItems=4,
                                    description="four [x, y] corners in the original image's pixels, clockwise "
                                                "from the text's top left"))),
                                results={"type": "object", "additionalProperties": {
                                    "allOf": [ref("Answer"), obj("success model version", success={"const": True},
                                                                 model=STRING, version=STRING)]}}),
        "RecognizeResponse": {"allOf": [obj("type client", type=STRING, client=STRING),
                                        {"anyOf": [ref("PredictResponse"), ref("PipelineResponse")]}]},
        "ClientMe": obj("success client routes quota", success={"const": True}, client=STRING,
                        routes={"type": "object", "additionalProperties": {"type": "object"}},
                        models={"type": ["array", "null"], "items": STRING}, rate={"type": ["number", "null"]},
                        burst={"type": ["integer", "null"]}, max_task_images={"type": ["integer", "null"]},
                        quota={"type": ["object", "null"]}),
        "Ready": obj("ready", ready=BOOLEAN, model=STRING, version=STRING, live_workers=INTEGER, reason=STRING),
        "Status": obj("model version queue_depth stats workers", model=STRING, version=STRING, queue_depth=INTEGER,
                      stats={"type": "object"}, workers=array({"type": "object"})),
        **task_and_v2_schemas(),
    }


def task_and_v2_schemas() -> dict[str, dict]:
    tensor = obj("name datatype shape", name=STRING, datatype={"enum": ["BYTES", "FP32", "INT32"]},
                 shape=array(INTEGER), data=array({}), parameters={"type": "object"})
    return {
        "TaskCreated": obj("success task_id status_url images", success={"const": True}, task_id=STRING,
                           status_url=STRING, images=INTEGER),
        "Task": obj("success task_id state total done failed results next_offset", success={"const": True},
                    task_id=STRING, state={"enum": ["PENDING", "RUNNING", "DONE", "CANCELLED", "EXPIRED"]},
                    total=INTEGER, done=INTEGER, failed=INTEGER, next_offset={"type": ["integer", "null"]},
                    results=array(obj("index success", index=INTEGER, filename={"type": ["string", "null"]},
                                      model=STRING, version=STRING, success=BOOLEAN,
                                      predictions=array(ref("Prediction")), detections=array(ref("Detection")),
                                      error=obj("code message", code=STRING, message=STRING)))),
        "TaskJson": obj(images=array({**STRING, "contentEncoding": "base64"}), urls=array({**STRING, "format": "uri"}),
                        model=STRING, models={**STRING, "description": "comma-separated"}, pipeline=STRING,
                        type={**STRING, "description": "a recognition type of the calling client"}),
        "TaskForm": obj(image=array({**STRING, "format": "binary", "contentMediaType": "application/octet-stream"}),
                        model=STRING, models=STRING, pipeline=STRING, type=STRING, max_frames=INTEGER),
        "V2Server": obj("name version extensions", name=STRING, version=STRING, extensions=array(STRING)),
        "V2TensorMetadata": obj("name datatype shape", name=STRING, datatype=STRING, shape=array(INTEGER)),
        "V2Model": obj("name versions platform inputs outputs", name=STRING, versions=array(STRING), platform=STRING,
                       inputs=array(ref("V2TensorMetadata")), outputs=array(ref("V2TensorMetadata"))),
        "V2Ready": obj("ready", name=STRING, version=STRING, ready=BOOLEAN),
        "V2Tensor": tensor,
        "V2InferRequest": obj("inputs", id=STRING, parameters={"type": "object"}, inputs=array(ref("V2Tensor")),
                              outputs=array(obj("name", name=STRING, parameters=obj(
                                  binary_data=BOOLEAN, classification={"type": "integer", "minimum": 1})))),
        "V2InferResponse": obj("model_name outputs", model_name=STRING, model_version=STRING, id=STRING,
                               outputs=array(ref("V2Tensor"))),
    }


# ------------------------------------------------------------------------------ operation builders
Operation = Callable[[object], dict]


def json_body(schema: str, example: dict | None = None) -> dict:
    content = {"schema": ref(schema)}
    if example:
        content["example"] = example
    return content


def ok(schema: str | None, description: str, media: str = "application/json", status: str = "200") -> dict:
    body = {"schema": ref(schema)} if schema else {"schema": {}}
    return {status: {"description": description, "content": {media: body}}}


def op(summary: str, tag: str, responses: dict, codes: tuple[str, ...] = (), *, body: dict | None = None,
       query: tuple[dict, ...] = (), path: tuple[str, ...] = (), secured: bool = False, v2: bool = False,
       description: str = "") -> dict:
    """An operation; `codes` become its error responses (by status), `path` describes its path parameters."""
    operation = {"summary": summary, "tags": [tag], "responses": dict(responses), "x-codes": codes, "x-v2": v2,
                 "x-path": path, "parameters": list(query)}
    if description:
        operation["description"] = description
    if body:
        operation["requestBody"] = {"required": True, "content": body}
    if secured:
        operation["x-secured"] = True
    return operation


def query(name: str, schema: dict, description: str) -> dict:
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


def predict(gw) -> dict:
    return op("Classify or detect on one image", "native", ok("PredictResponse", "the model's answer"),
              UPLOAD + ("MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND", "MODEL_UNAVAILABLE") + QUEUED,
              body={"multipart/form-data": {"schema": ref("PredictForm")},
                    "application/json": json_body("PredictJson", {"image": example_png(), "top_k": 3})},
              query=(query("top_k", {"type": "integer"}, "as the body field"),
                     query("model", STRING, "as the body field; the path wins"),
                     query("version", STRING, "as the body field; the path wins")),
              path=("a served model (GET /v1/models)", "a version of the model"), secured=True,
              description="The image as multipart field `image` (`curl -F image=@cat.jpg`) or JSON "
                          "`{\"image\": \"<base64>\"}`, or `url`; `top_k`, `model` and `version` as body fields "
                          "or query parameters.")


def pipeline_predict(gw) -> dict:
    return op("Run a pipeline on one image", "native", ok("PipelineResponse", "the pipeline's answer"),
              UPLOAD + ("PIPELINE_NOT_FOUND", "MODEL_NOT_FOUND", "PIPELINE_STEP_FAILED") + QUEUED,
              body={"multipart/form-data": {"schema": ref("PredictForm")},
                    "application/json": json_body("PredictJson", {"image": example_png()})},
              query=(query("top_k", {"type": "integer"}, "as the body field"),),
              path=("a pipeline (GET /v1/pipelines)",), secured=True)


def recognize(gw) -> dict:
    return op("Recognize a type: the calling client's route picks the model version or pipeline", "native",
              ok("RecognizeResponse", "the answer of the model or pipeline the route names"),
              UPLOAD + ("TYPE_NOT_FOUND", "MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND", "MODEL_UNAVAILABLE",
                        "PIPELINE_NOT_FOUND", "PIPELINE_STEP_FAILED") + QUEUED,
              body={"multipart/form-data": {"schema": ref("PredictForm")},
                    "application/json": json_body("PredictJson", {"image": example_png()})},
              query=(query("top_k", {"type": "integer"}, "as the body field"),),
              path=("a recognition type of the calling client (GET /v1/clients/me lists its routes)",), secured=True,
              description="The same body as /predict; `model` and `version` are ignored: the client's route (the "
                          "CLIENTS file) decides, a canary split by the image's bytes.")


def v2_infer(gw) -> dict:
    example = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [example_png()]}],
               "outputs": [{"name": "probabilities", "parameters": {"classification": 3}}]}
    header = {"name": "Inference-Header-Content-Length", "in": "header", "required": False,
              "schema": {"type": "integer", "minimum": 1},
              "description": "binary tensor data extension: the byte length of the JSON header at the body's start"}
    answers = ok("V2InferResponse", "the outputs: JSON, or the JSON header then binary data (see "
                 "Inference-Header-Content-Length)")
    answers["200"]["content"]["application/octet-stream"] = {"schema": {}}
    return op("Infer (Open Inference Protocol)", "v2", answers,
              ("INVALID_PARAMETER", "EMPTY_IMAGE", "INVALID_BASE64", "IMAGE_UNREADABLE", "UNSUPPORTED_FORMAT",
               "IMAGE_TOO_LARGE", "PAYLOAD_TOO_LARGE", "UNAUTHORIZED", "MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND",
               "MODEL_UNAVAILABLE", "MODEL_NOT_ALLOWED", "RATE_LIMITED") + QUEUED,
              body={"application/json": json_body("V2InferRequest", example),
                    "application/octet-stream": {"schema": {}}},
              query=(header,), path=("the model", "its version"), secured=True, v2=True,
              description="Input `image`: BYTES [N], each element an encoded image file (base64 in JSON; raw, "
                          "length-prefixed, as binary tensor data). Classifiers answer FP32 `probabilities` "
                          "[N, classes]; `parameters.classification: k` on it answers BYTES \"score:index:label\" "
                          "[N, k]. Detectors answer `boxes`, `scores`, `labels` and `count`.")


def simple(summary: str, tag: str, schema: str | None, codes: tuple[str, ...] = (), media: str = "application/json",
           path: tuple[str, ...] = (), v2: bool = False, status: str = "200", extra: dict | None = None) -> Operation:
    return lambda gw: op(summary, tag, {**ok(schema, summary, media, status), **(extra or {})}, codes, path=path,
                         v2=v2)


def not_ready(schema: str, status: str = "400") -> dict:
    return {status: {"description": "not ready", "content": {"application/json": {"schema": ref(schema)}}}}


def undocumented(gw) -> dict:
    return op("Undocumented route", "undocumented", {"default": {"description": "not documented yet"}})


REQUEST_ID = {"name": "X-Request-ID", "in": "header", "required": False, "schema": STRING,
              "description": "a trace id (1-128 of A-Z a-z 0-9 . _ : -) to log and echo; otherwise a new one"}
MODEL_PATH = ("a served model (GET /v1/models)", "a version of the model")
OPERATIONS: dict[tuple[str, str], Operation] = {
    ("POST", "/predict"): predict,
    ("POST", "/v1/models/{}/predict"): predict,
    ("POST", "/v1/models/{}/versions/{}/predict"): predict,
    ("GET", "/v1/models"): simple("List the served models and their versions", "native", "ModelList",
                                  ("QUEUE_UNAVAILABLE",)),
    ("GET", "/v1/models/{}"): simple("One served model", "native", "Model", ("MODEL_NOT_FOUND", "QUEUE_UNAVAILABLE"),
                                     path=MODEL_PATH),
    ("GET", "/v1/pipelines"): simple("List the pipelines", "native", "PipelineList"),
    ("POST", "/v1/pipelines/{}/predict"): pipeline_predict,
    ("POST", "/v1/recognize/{}"): recognize,
    ("GET", "/v1/clients/me"): lambda gw: op("The calling client: its name, routes and quota now", "native",
                                             ok("ClientMe", "the caller"), ("UNAUTHORIZED", "QUEUE_UNAVAILABLE"),
                                             secured=True),
    ("GET", "/healthz"): simple("Liveness: the process is up", "operations", None),
    ("GET", "/readyz"): simple("Readiness: Redis answers and the default model has a live worker", "operations",
                               "Ready", extra=not_ready("Ready", "503")),
    ("GET", "/status"): simple("The default model's queue, counters and workers", "operations", "Status",
                               ("MODEL_NOT_FOUND", "QUEUE_UNAVAILABLE")),
    ("GET", "/metrics"): simple("Prometheus metrics", "operations", None, ("QUEUE_UNAVAILABLE",), media="text/plain"),
    ("GET", "/"): simple("The web page", "operations", None, media="text/html"),
    ("GET", "/static/{}"): simple("A file of the web page", "operations", None, ("NOT_FOUND",), media="*/*",
                                  path=("a file under static/",)),
    ("GET", "/openapi.json"): simple("This document (OpenAPI 3.1)", "documentation", None),
    ("GET", "/docs"): simple("Swagger UI for this document", "documentation", None, media="text/html"),
    ("GET", "/docs/swagger-initializer.js"): simple("Swagger UI's start-up script", "documentation", None,
                                                    media="text/javascript"),
    ("GET", "/docs/{}"): simple("A Swagger UI file", "documentation", None, ("NOT_FOUND",), media="*/*",
                                path=("a file of the Swagger UI distribution",)),
    ("POST", "/v1/tasks"): lambda gw: op(
        "Queue many images as one task", "tasks", {"202": {
            "description": "accepted; poll status_url", "headers": {"Location": {"schema": STRING}},
            "content": {"application/json": {"schema": ref("TaskCreated")}}}},
        UPLOAD + ("TASK_TOO_LARGE", "TYPE_NOT_FOUND", "MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND",
                  "PIPELINE_NOT_FOUND", "SERVER_BUSY", "QUEUE_UNAVAILABLE"),
        body={"multipart/form-data": {"schema": ref("TaskForm")}, "application/json": {"schema": ref("TaskJson")}},
        secured=True),
    ("GET", "/v1/tasks/{}"): lambda gw: op(
        "A task's state and a page of its results", "tasks", ok("Task", "the task"),
        ("TASK_NOT_FOUND", "INVALID_PARAMETER", "UNAUTHORIZED", "QUEUE_UNAVAILABLE"),
        query=(query("offset", {"type": "integer", "minimum": 0, "default": 0}, "first result index"),
               query("limit", {"type": "integer", "minimum": 1, "default": 100}, "results per page")),
        path=("the task_id POST /v1/tasks answered",), secured=True),
    ("DELETE", "/v1/tasks/{}"): lambda gw: op(
        "Cancel a task", "tasks", ok("Task", "the task, CANCELLED"),
        ("TASK_NOT_FOUND", "UNAUTHORIZED", "QUEUE_UNAVAILABLE"), path=("the task_id",), secured=True),
    ("GET", "/v2"): simple("Server metadata", "v2", "V2Server", v2=True),
    ("GET", "/v2/health/live"): simple("Server live", "v2", None, v2=True),
    ("GET", "/v2/health/ready"): simple("Server ready: Redis answers and every model has a READY version", "v2",
                                        None, v2=True, extra=not_ready("V2Ready")),
    ("GET", "/v2/models/{}"): simple("Model metadata", "v2", "V2Model", ("MODEL_NOT_FOUND", "QUEUE_UNAVAILABLE"),
                                     path=MODEL_PATH, v2=True),
    ("GET", "/v2/models/{}/versions/{}"): simple("Model version metadata", "v2", "V2Model",
                                                 ("MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND", "QUEUE_UNAVAILABLE"),
                                                 path=MODEL_PATH, v2=True),
    ("GET", "/v2/models/{}/ready"): simple("Model ready", "v2", "V2Ready", ("MODEL_NOT_FOUND", "QUEUE_UNAVAILABLE"),
                                           path=MODEL_PATH, v2=True, extra=not_ready("V2Ready")),
    ("GET", "/v2/models/{}/versions/{}/ready"): simple(
        "Model version ready", "v2", "V2Ready", ("MODEL_NOT_FOUND", "MODEL_VERSION_NOT_FOUND", "QUEUE_UNAVAILABLE"),
        path=MODEL_PATH, v2=True, extra=not_ready("V2Ready")),
    ("POST", "/v2/models/{}/infer"): v2_infer,
    ("POST", "/v2/models/{}/versions/{}/infer"): v2_infer,
}


# ------------------------------------------------------------------------------------- finishing
def finish(operation: dict, path: str, params: list[str], gw) -> dict:
    """Path parameters, the request id header, error responses by status, headers on every response."""
    operation = dict(operation)
    descriptions = operation.pop("x-path")
    pipelines = sorted(gw.plans) or ["none"]
    named = {"/v1/pipelines": pipelines[0], "/static": "app.js", "/docs": "swagger-ui.css"}
    prefix = next((prefix for prefix in named if path.startswith(prefix + "/")), None)
    examples = {"name": named[prefix] if prefix else gw.config.model, "version": "1"}
    operation["parameters"] = [
        {"name": name, "in": "path", "required": True, "schema": STRING, "example": examples.get(name, "x"),
         "description": descriptions[index] if index < len(descriptions) else name}
        for index, name in enumerate(params)] + operation["parameters"] + [
        REQUEST_ID]
    if operation.pop("x-secured", False):
        operation["security"] = [{"ApiKey": []}] if gw.config.api_key else [{}, {"ApiKey": []}]
    v2 = operation.pop("x-v2")
    # A path parameter holding "/" makes a path that no route matches: the app's own NOT_FOUND envelope.
    names = operation.pop("x-codes") + ("INTERNAL_ERROR",) + (("NOT_FOUND",) if params and not v2 else ())
    codes = [errors.BY_CODE[code] for code in dict.fromkeys(names) if code in errors.BY_CODE]
    responses = dict(operation["responses"])
    if params and v2:
        responses.update(error_responses([errors.NOT_FOUND], False))
    for status, response in error_responses(codes, v2).items():
        if status in responses:        # an answer of its own and error codes share the status
            schemas = [item["schema"] for item in (responses[status]["content"]["application/json"],
                                                    response["content"]["application/json"])]
            response = {**response, "description": f"{responses[status]['description']}; {response['description']}",
                        "content": {"application/json": {"schema": {"anyOf": schemas}}}}
        responses[status] = response
    operation["responses"] = responses
    for response in operation["responses"].values():
        response["headers"] = {**response.get("headers", {}), **common_headers(response)}
    return operation


def error_responses(codes: list[errors.ErrorCode], v2: bool) -> dict:
    by_status: dict[int, list[errors.ErrorCode]] = {}
    for error in codes:
        by_status.setdefault(error.status, []).append(error)
    responses = {}
    for status, group in sorted(by_status.items()):
        listing = "; ".join(f"`{error.code}`: {error.description}" for error in group)
        schema = ref("ProtocolError") if v2 else {"allOf": [ref("Error")], "properties": {"error": {
            "properties": {"code": {"enum": [error.code for error in group]}}}}}
        responses[str(status)] = {"description": listing, "content": {"application/json": {"schema": schema}}}
        if status in (429, 503):
            responses[str(status)]["headers"] = {"Retry-After": {"description": "seconds to wait before retrying",
                                                                 "schema": INTEGER}}
    return responses


def common_headers(response: dict) -> dict:
    del response
    return {"X-Request-ID": {"description": "the request's trace id", "schema": STRING},
            "X-Served-By": {"description": "the web server that answered", "schema": STRING}}


@cache
def example_png() -> str:
    """A small valid image for the examples (Swagger UI's "Try it out", schemathesis' examples phase)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (180, 120, 60)).save(buffer, "PNG")
    return base64.b64encode(buffer.getvalue()).decode()
