"""Repository formats: model.onnx (ONNX Runtime) and model.tflite (LiteRT) beside model.keras.

One gateway for the module (real redis-server, the web tier over HTTP, a ModelHost in this process)
serves the built-in efficientnet_lite0 and a repository. The default model, exported to ONNX by
tf2onnx (NCHW input, logits, normalisation in config.json) and to LiteRT (normalisation and softmax
inside), is dropped into the repository while the gateway runs, and must answer every photo as the
built-in does, through /predict, /v1, /v2 and a task. Broken versions are listed UNAVAILABLE with a
reason that names the field or the op, never a path.
"""
from __future__ import annotations

import base64
import io
import time
import uuid

import numpy as np
import pytest
import requests
from model_files import (
    IMAGENET_LABELS,
    channel_mean_classifier,
    custom_op_model,
    default_model_onnx,
    default_model_tflite,
    version,
)
from PIL import Image
from test_many_models import Gateway

from conftest import DATA, make_config, wait_for
from image_gateway import imaging, protocol

PHOTOS = ("astronaut", "cat", "coffee", "motorcycle", "rocket")
BUILTIN = "efficientnet_lite0"
LITE0_CONFIG = {"resample": "bicubic", "crop_fraction": 0.875}      # the built-in's web-tier resize
ONNX_CONFIG = {**LITE0_CONFIG, "mean": 127, "std": 128, "output": "logits"}


@pytest.fixture(scope="module")
def gateway(redis_server, classifier, tmp_path_factory):
    repository = tmp_path_factory.mktemp("repository")
    config = make_config(redis_server.url, key_prefix=f"formats-{uuid.uuid4().hex[:6]}", model=BUILTIN,
                         model_repository=str(repository), repository_poll_s=0.2, catalog_refresh_s=0.2)
    onnx_file, tflite_file = default_model_onnx(classifier), default_model_tflite(classifier)  # before the clock
    served = Gateway(config)
    served.repository, served.config = repository, config
    served.files = {"onnx": onnx_file, "tflite": tflite_file}
    yield served
    served.stop()


def wait_state(gateway, name: str, number: int, state: str, timeout_s: float = 60) -> dict:
    wait_for(lambda: gateway.versions(name).get(str(number), {}).get("state") == state, timeout_s, 0.1,
             message=f"{name} version {number} {state}")
    return gateway.versions(name)[str(number)]


@pytest.fixture(scope="module")
def dropped(gateway):
    """lite0_onnx and lite0_tflite, copied into the running gateway's repository; READY without a restart."""
    labels = IMAGENET_LABELS.read_text()
    version(gateway.repository, "lite0_onnx", 1,
            {"model.onnx": gateway.files["onnx"], "labels.txt": labels, "config.json": ONNX_CONFIG})
    version(gateway.repository, "lite0_tflite", 1,
            {"model.tflite": gateway.files["tflite"], "labels.txt": labels, "config.json": LITE0_CONFIG})
    for name in ("lite0_onnx", "lite0_tflite"):
        wait_state(gateway, name, 1, "READY", 120)
    return ("lite0_onnx", "lite0_tflite")


def predictions(response: requests.Response) -> list[dict]:
    body = response.json()
    assert response.status_code == 200, body
    return body["predictions"]


def assert_same_top5(mine: list[dict], builtin: list[dict]) -> None:
    assert [(p["class_id"], p["label"]) for p in mine] == [(p["class_id"], p["label"]) for p in builtin]
    assert np.allclose([p["probability"] for p in mine], [p["probability"] for p in builtin], atol=1e-4)


def v2_probabilities(gateway, name: str, photo: bytes) -> np.ndarray:
    encoded = base64.b64encode(photo).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [encoded]}]}
    response = requests.post(f"{gateway.url}/v2/models/{name}/infer", json=body, timeout=60)
    assert response.status_code == 200, response.text
    output = {item["name"]: item for item in response.json()["outputs"]}["probabilities"]
    return np.asarray(output["data"], np.float32)


def test_dropped_in_versions_are_listed_with_format_and_runtime(gateway, dropped):
    listing = gateway.models()
    for name, file_format, runtime in (("lite0_onnx", "onnx", "onnxruntime"), ("lite0_tflite", "tflite", "litert")):
        assert (listing[name]["kind"], listing[name]["input_size"]) == ("classifier", 224)
        assert listing[name]["versions"] == [{"version": "1", "state": "READY", "live_workers": 1,
                                              "format": file_format, "runtime": runtime}]
    assert listing[BUILTIN]["versions"][0]["format"] == "builtin" and listing[BUILTIN]["versions"][0]["runtime"]


@pytest.mark.parametrize("photo", PHOTOS)
def test_onnx_and_tflite_answer_as_the_builtin_on_every_route(gateway, dropped, photo):
    data = (DATA / f"{photo}.jpg").read_bytes()
    builtin = predictions(gateway.post("/predict", data))
    builtin_v2 = v2_probabilities(gateway, BUILTIN, data)
    for name in dropped:
        assert_same_top5(predictions(gateway.post("/predict", data, model=name)), builtin)
        assert_same_top5(predictions(gateway.post(f"/v1/models/{name}/predict", data)), builtin)
        assert_same_top5(predictions(gateway.post(f"/v1/models/{name}/versions/1/predict", data)), builtin)
        assert np.abs(v2_probabilities(gateway, name, data) - builtin_v2).max() < 1e-4


def test_a_task_runs_the_photos_through_every_format(gateway, dropped):
    files = [("image", (f"{name}.jpg", (DATA / f"{name}.jpg").read_bytes())) for name in PHOTOS]
    created = requests.post(gateway.url + "/v1/tasks", files=files, data={"models": ",".join((BUILTIN, *dropped))},
                            timeout=60)
    assert created.status_code == 202, created.text
    status = f"{gateway.url}{created.json()['status_url']}"
    wait_for(lambda: requests.get(status, timeout=10).json()["state"] == "DONE", 120, 0.2, message="the task")
    results = requests.get(status, params={"limit": 100}, timeout=10).json()["results"]
    assert len(results) == len(PHOTOS) * 3 and all(result["success"] for result in results)
    by_image = {(result["index"], result["model"]): result["predictions"] for result in results}
    for index in range(len(PHOTOS)):
        for name in dropped:
            assert_same_top5(by_image[(index, name)], by_image[(index, BUILTIN)])


def keras_channel_means(path, size: int):
    import keras

    inputs = keras.Input((size, size, 3))
    keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs)).save(path)
    return path


def solid_png(colour: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("kind", ["onnx-NCHW", "onnx-NHWC", "keras"])
def test_channel_order_normalisation_and_layout_reach_the_model(gateway, tmp_path, kind):
    """Its logits are the means of the channels it is fed: (pixel * scale - mean) / std in BGR order (a
    .keras model gets the same normalisation inside its converted LiteRT file)."""
    name = f"means_{kind.replace('-', '_').lower()}"
    config = {"channel_order": "BGR", "scale": 0.5, "mean": [10, 20, 30], "std": [2, 4, 5], "output": "logits"}
    model = {"model.keras": keras_channel_means(tmp_path / "m.keras", 16)} if kind == "keras" else \
        {"model.onnx": channel_mean_classifier(tmp_path / "m.onnx", kind.split("-")[1], 16)}
    version(gateway.repository, name, 1, {**model, "labels.txt": "first\nsecond\nthird\n", "config.json": config})
    assert wait_state(gateway, name, 1, "READY")["format"] == kind.split("-")[0]
    red, green, blue = 200, 100, 40
    logits = np.array([(blue * 0.5 - 10) / 2, (green * 0.5 - 20) / 4, (red * 0.5 - 30) / 5])   # 0.0, 7.5, 14.0
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    answer = predictions(gateway.post("/predict", solid_png((red, green, blue)), model=name))
    assert [p["label"] for p in answer] == ["third", "second", "first"]
    assert np.allclose([p["probability"] for p in answer], expected[[2, 1, 0]], atol=2e-6)


@pytest.mark.skipif(not hasattr(imaging, "fit_square"),
                    reason="the web tier fits squash/letterbox classifiers with imaging.fit_square, not there yet")
def test_squash_and_letterbox_classifiers_get_the_whole_image(gateway, tmp_path):
    """Logits = channel means / 10. A 64x16 image: letterboxed into 16x16 it is a 16x4 band on grey 114,
    so each mean is (64 x colour + 192 x 114) / 256; squashed, a red first quarter stays a quarter (a
    center crop would see only blue)."""
    model = channel_mean_classifier(tmp_path / "m.onnx", "NHWC", 16)
    for name, resize in (("boxed", "letterbox"), ("squashed", "squash")):
        version(gateway.repository, name, 1, {"model.onnx": model, "labels.txt": "red\ngreen\nblue\n",
                                              "config.json": {"resize": resize, "std": 10, "output": "logits"}})
        wait_state(gateway, name, 1, "READY")
    logits = np.array([(64 * 200 + 192 * 114) / 2560, (64 * 100 + 192 * 114) / 2560, (64 * 40 + 192 * 114) / 2560])
    expected = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    boxed = predictions(gateway.post("/predict", solid_png((200, 100, 40), (64, 16)), model="boxed", top_k=3))
    assert np.allclose([p["probability"] for p in boxed], expected, atol=2e-6)
    image = Image.new("RGB", (64, 16), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 16, 16))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    squashed = {p["label"]: p["probability"] for p in predictions(gateway.post("/predict", buffer.getvalue(),
                                                                               model="squashed", top_k=3))}
    quarter = np.exp([63.75 / 10, 0.0, 191.25 / 10]) / np.exp([63.75 / 10, 0.0, 191.25 / 10]).sum()
    assert np.allclose([squashed["red"], squashed["green"], squashed["blue"]], quarter, atol=0.02)


def test_an_input_of_the_wrong_size_never_reaches_the_model(gateway, dropped):
    """A forged job of another size on the queue (the web tier always resizes) is refused before the runtime."""
    model = gateway.host.groups[("lite0_onnx", "1")].workers[0].classifier
    queue = protocol.JobQueue(protocol.connect(gateway.config.redis_url, 10.0), "lite0_onnx",
                              gateway.config.key_prefix, "1")
    runs = model.runs
    for shape in ((200, 200, 3), (224, 224, 4), (224, 224)):
        job = protocol.Job(id=protocol.new_job_id(), model="lite0_onnx", version="1", deadline=time.time() + 20,
                           array=np.zeros(shape, np.uint8), top_k=5, trace_id="wrong-size")
        assert queue.enqueue(job, 100)
        result = queue.wait_result(job.id, 20)
        assert result is not None and not result.success and result.error["code"] == "INFERENCE_FAILED"
    assert model.runs == runs
    assert predictions(gateway.post("/predict", (DATA / "cat.jpg").read_bytes(), model="lite0_onnx"))
    assert model.runs == runs + 1


@pytest.mark.parametrize(("files", "expected"), [
    ({"model.onnx": b"\x08\x07 this is not a protobuf of a model"},
     "model.onnx is not a readable ONNX model (protobuf parsing failed)"),
    ({"model.onnx": "custom"}, "model.onnx needs the operator com.example:FancyResize"),
    ({"model.tflite": b"not a flatbuffer at all, just bytes"}, "model.tflite is not a loadable LiteRT model"),
    ({"model.onnx": "means", "config.json": {"layout": "NWHC"}}, 'config.json: field "layout" must be NHWC or NCHW'),
    ({"model.onnx": "means", "config.json": {"layuot": "NHWC"}}, 'config.json: unknown field "layuot"'),
    ({"model.onnx": "means", "config.json": {"kind": "detector"}}, 'config.json: field "head" is needed'),
    ({"model.onnx": "means", "config.json": {"input_size": 32}}, 'config.json: field "input_size" is 32x32, but'),
    ({"model.onnx": "means", "config.json": {"dtype": "uint8"}}, 'config.json: field "dtype" must be float32'),
    ({"model.onnx": "means", "config.json": {"mean": [1, 2]}}, 'config.json: field "mean" must be a number or a list'),
    ({"model.onnx": "means", "config.json": {"output": "scores"}}, 'field "output" must be probabilities or logits'),
    ({"model.onnx": "means", "config.json": "{not json"}, "config.json: not valid JSON"),
    ({"model.onnx": "means", "labels.txt": "one\ntwo\n"}, "labels.txt has 2 labels but model.onnx's output has 3"),
    ({"model.onnx": "means", "model.keras": b"zip"}, "the version folder holds model.onnx and model.keras: keep one"),
    ({"model.keras": b"zip", "config.json": {"input_size": 8, "kind": "detector", "head": "yolo"}},
     'config.json: field "kind" detector needs model.onnx or model.tflite'),
], ids=["corrupt-onnx", "custom-op", "corrupt-tflite", "layout", "unknown-field", "detector-without-head",
        "input-size", "dtype", "mean", "output", "json", "labels", "two-files", "keras-detector"])
def test_a_broken_version_is_unavailable_with_a_reason_and_others_keep_serving(gateway, tmp_path, files, expected):
    built = {"custom": custom_op_model(tmp_path / "custom.onnx"),
             "means": channel_mean_classifier(tmp_path / "means.onnx", "NCHW", 16)}
    name = f"broken_{uuid.uuid4().hex[:8]}"
    version(gateway.repository, name, 1, {file: built.get(content, content) if isinstance(content, str) else content
                                          for file, content in files.items()})
    listed = wait_state(gateway, name, 1, "UNAVAILABLE")
    assert expected in listed["reason"], listed["reason"]
    assert str(gateway.repository) not in listed["reason"] and "/tmp" not in listed["reason"]
    refused = gateway.post("/predict", solid_png((1, 2, 3)), model=name, version="1")
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "MODEL_UNAVAILABLE"
    assert predictions(gateway.post("/predict", solid_png((1, 2, 3))))                 # the default keeps serving
