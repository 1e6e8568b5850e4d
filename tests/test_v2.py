"""The Open Inference Protocol (KServe v2) driven by Triton's own client, `tritonclient[http]` from PyPI.

A real gateway (the embedded web server over HTTP, real redis-server, a worker thread with the real default model);
every answer is compared with what /predict says about the same photo.
"""
from __future__ import annotations

import asyncio
import base64

import numpy as np
import pytest
import requests
import tritonclient.http as triton
import tritonclient.http.aio as triton_aio
from tritonclient.utils import InferenceServerException

from conftest import DATA, ServerThread, WorkerThread, make_config, wait_for

MODEL = "efficientnet_lite0"
PHOTOS = ("cat", "coffee", "motorcycle", "rocket", "astronaut")


@pytest.fixture(scope="module")
def gateway(redis_server, classifier):
    """One gateway for the module: the embedded web server and one worker thread with the default model."""
    from image_gateway.web.app import create_app
    config = make_config(redis_server.url, key_prefix="v2test", request_timeout=60.0)
    web = ServerThread(create_app(config), config)
    worker = WorkerThread(config, classifier)
    try:
        wait_for(lambda: requests.get(web.url + "/v2/health/ready", timeout=5).status_code == 200, 60, 0.1,
                 message="the gateway to be ready")     # (its view of the workers is CATALOG_REFRESH_S old)
        yield web
    finally:
        web.stop()
        worker.stop()


@pytest.fixture(scope="module")
def client(gateway):
    client = triton.InferenceServerClient(url=gateway.url.removeprefix("http://"), concurrency=4)
    yield client
    client.close()


@pytest.fixture(scope="module")
def predict_top5(gateway) -> dict[str, list[tuple[int, str, float]]]:
    """/predict's answer per photo: (class_id, label, probability) of the top 5."""
    answers = {}
    for name in PHOTOS:
        response = requests.post(gateway.url + "/predict", files={"image": (DATA / f"{name}.jpg").read_bytes()},
                                 timeout=60)
        assert response.status_code == 200, response.text
        answers[name] = [(p["class_id"], p["label"], p["probability"]) for p in response.json()["predictions"]]
    return answers


def image_input(names: tuple[str, ...], binary: bool) -> triton.InferInput:
    files = [(DATA / f"{name}.jpg").read_bytes() for name in names]
    tensor = triton.InferInput("image", [len(files)], "BYTES")
    elements = files if binary else [base64.b64encode(data) for data in files]   # JSON carries base64 text
    tensor.set_data_from_numpy(np.array(elements, dtype=object), binary_data=binary)
    return tensor


def parse_classification(row) -> list[tuple[int, str, float]]:
    """Triton's "score:index:label" strings -> (class_id, label, probability); bytes from binary data, str
    from JSON (as tritonclient returns them)."""
    entries = [(item.decode() if isinstance(item, bytes) else item).split(":", 2) for item in row]
    return [(int(index), label, float(score)) for score, index, label in entries]


def assert_same_top5(ours: list[tuple[int, str, float]], theirs: list[tuple[int, str, float]]) -> None:
    assert [(i, label) for i, label, _ in ours] == [(i, label) for i, label, _ in theirs]
    assert np.allclose([p for *_, p in ours], [p for *_, p in theirs], atol=2e-6)


def test_health_and_server_metadata(client):
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_server_metadata()
    assert {"binary_tensor_data", "classification"} <= set(metadata["extensions"])


def test_model_readiness_and_metadata(client):
    assert client.is_model_ready(MODEL) and client.is_model_ready(MODEL, "1")
    assert not client.is_model_ready(MODEL, "7") and not client.is_model_ready("nope")
    metadata = client.get_model_metadata(MODEL)
    assert metadata == client.get_model_metadata(MODEL, "1")
    assert metadata["name"] == MODEL and metadata["versions"] == ["1"]
    assert metadata["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 1000]}]
    with pytest.raises(InferenceServerException, match="not served"):
        client.get_model_metadata("nope")


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_classification_extension_gives_the_top5_of_predict(client, predict_top5, binary):
    for name in PHOTOS:
        output = triton.InferRequestedOutput("probabilities", binary_data=binary, class_count=5)
        result = client.infer(MODEL, [image_input((name,), binary)], outputs=[output])
        answer = result.as_numpy("probabilities")
        assert answer.shape == (1, 5)
        assert_same_top5(parse_classification(answer[0]), predict_top5[name])
        assert result.get_response()["model_version"] == "1"


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_probabilities_are_the_whole_softmax_for_a_batch(client, predict_top5, binary):
    output = triton.InferRequestedOutput("probabilities", binary_data=binary)
    result = client.infer(MODEL, [image_input(PHOTOS, binary)], model_version="1", outputs=[output])
    probabilities = result.as_numpy("probabilities")
    assert probabilities.dtype == np.float32 and probabilities.shape == (len(PHOTOS), 1000)
    assert np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-3)
    for name, row in zip(PHOTOS, probabilities, strict=True):
        top5 = np.argsort(row)[::-1][:5]
        expected = predict_top5[name]
        assert list(top5) == [class_id for class_id, *_ in expected]
        assert np.allclose(row[top5], [p for *_, p in expected], atol=2e-6)


def test_concurrent_requests_through_the_async_client(gateway, predict_top5):
    async def run() -> list:
        client = triton_aio.InferenceServerClient(url=gateway.url.removeprefix("http://"))
        try:
            output = triton.InferRequestedOutput("probabilities", class_count=5)
            calls = [client.infer(MODEL, [image_input((name,), True)], outputs=[output], request_id=f"{name}-{i}")
                     for i in range(4) for name in PHOTOS]
            return await asyncio.gather(*calls)
        finally:
            await client.close()

    results = asyncio.run(run())
    assert len(results) == 4 * len(PHOTOS)
    for result in results:
        name = result.get_response()["id"].split("-")[0]
        assert_same_top5(parse_classification(result.as_numpy("probabilities")[0]), predict_top5[name])


def test_protocol_errors(gateway, client):
    with pytest.raises(InferenceServerException, match="unexpected inference input 'pixels'"):
        wrong = triton.InferInput("pixels", [1], "BYTES")
        wrong.set_data_from_numpy(np.array([b"x"], dtype=object))
        client.infer(MODEL, [wrong])
    garbage = triton.InferInput("image", [1], "BYTES")
    garbage.set_data_from_numpy(np.array([b"not an image at all"], dtype=object))
    with pytest.raises(InferenceServerException, match="element 0: .*not a readable image"):
        client.infer(MODEL, [garbage])
    with pytest.raises(InferenceServerException, match="not served"):
        client.infer("nope", [image_input(("cat",), True)])
    url = f"{gateway.url}/v2/models/{MODEL}/infer"
    cases = [(b"{not json", 400, "not valid JSON"),
             (b'{"inputs": [{"name": "image", "datatype": "FP32", "shape": [1], "data": [1.0]}]}', 400, "BYTES"),
             (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2], "data": ["aGk="]}]}', 400,
              "1 elements for shape [2]"),
             (b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": ["%%%"]}]}', 400, "base64")]
    for body, status, message in cases:
        response = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
        assert response.status_code == status and message in response.json()["error"], response.text
        assert set(response.json()) == {"error"}


def test_raw_file_as_binary_data_and_api_key(redis_url, classifier, gateway_factory):
    """The bare file as the binary data (no length prefix), and the X-API-Key the gateway asks for."""
    config = make_config(redis_url, api_key="sesame")
    web, _ = gateway_factory(config, classifier)
    cat = (DATA / "cat.jpg").read_bytes()
    header = b'{"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], ' \
             b'"parameters": {"binary_data_size": %d}}], "outputs": [{"name": "probabilities", ' \
             b'"parameters": {"classification": 1}}]}' % len(cat)
    url, length = f"{web.url}/v2/models/{MODEL}/infer", {"Inference-Header-Content-Length": str(len(header))}
    refused = requests.post(url, data=header + cat, headers=length, timeout=30)
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    answered = requests.post(url, data=header + cat, headers={**length, "X-API-Key": "sesame"}, timeout=60)
    assert answered.status_code == 200, answered.text
    (output,) = answered.json()["outputs"]
    assert output["shape"] == [1, 1] and output["data"][0].split(":")[1] in {"285", "282", "281"}   # a cat


def test_a_detector_answers_padded_boxes_scores_labels_and_counts(redis_url):
    """mtcnn on [astronaut, cat]: one face and none, as /predict finds them, padded to the longest answer."""
    from test_many_models import Gateway
    gateway = Gateway(make_config(redis_url, model="mtcnn", request_timeout=60.0))
    try:
        wait_for(lambda: requests.get(gateway.url + "/v2/models/mtcnn/ready", timeout=5).status_code == 200, 120, 0.2,
                 message="mtcnn to be ready")
        client = triton.InferenceServerClient(url=gateway.url.removeprefix("http://"))
        names = [output["name"] for output in client.get_model_metadata("mtcnn")["outputs"]]
        assert names == ["boxes", "scores", "labels", "count"]
        result = client.infer("mtcnn", [image_input(("astronaut", "cat"), True)])
        face = requests.post(gateway.url + "/predict", files={"image": (DATA / "astronaut.jpg").read_bytes()},
                             timeout=60).json()["detections"]
        assert len(face) == 1 and list(result.as_numpy("count")) == [1, 0]
        assert result.as_numpy("boxes").shape == (2, 1, 4)
        assert np.allclose(result.as_numpy("boxes")[0, 0], face[0]["box"], atol=0.01)
        assert np.allclose(result.as_numpy("scores")[:, 0], [face[0]["score"], 0.0], atol=1e-6)
        assert list(result.as_numpy("labels")[:, 0]) == [b"face", b""]
    finally:
        gateway.stop()
