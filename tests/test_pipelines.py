"""Detectors through the gateway, and pipelines: detect then classify each face, and fan-out.

Real redis-server, the real mtcnn and EfficientNet-Lite models in worker threads (LiteRT where they
convert, as RUNTIME=auto serves them), the real photos.
"""
from __future__ import annotations

import io
import json
import os
import signal

import pytest
import requests
from PIL import Image
from test_many_models import Gateway

from conftest import ARTIFACTS, DATA, make_config, start_worker_process, wait_for
from image_gateway import imaging, processes

ASTRONAUT = (DATA / "astronaut.jpg").read_bytes()


@pytest.fixture(scope="module")
def gateway(redis_server):
    """One gateway for the module: mtcnn, efficientnet_lite0 (the default) and efficientnet_lite1."""
    config = make_config(redis_server.url, models="mtcnn,efficientnet_lite1", request_timeout=60.0,
                         worker_threads=2, key_prefix="pipelines")   # apart from the later tests' workers
    started = Gateway(config)
    yield started
    started.stop()


def post(url: str, data: bytes, timeout: float = 60, **fields) -> requests.Response:
    return requests.post(url, files={"image": ("photo", data)}, data=fields, timeout=timeout)


def png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def test_the_detector_finds_the_astronauts_face_in_original_pixels(gateway):
    body = post(gateway.url + "/v1/models/mtcnn/predict", ASTRONAUT).json()
    assert body["success"] and (body["model"], body["version"]) == ("mtcnn", "1")
    faces = [d for d in body["detections"] if d["score"] >= 0.9]
    assert len(faces) == 1 and faces[0]["label"] == "face"
    x_min, y_min, x_max, y_max = faces[0]["box"]
    assert 150 < x_min < x_max < 300 and 40 < y_min < y_max < 200          # around the face of the 512 px photo
    assert set(faces[0]["landmarks"]) == {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
    for photo in ("coffee", "cat"):
        found = post(gateway.url + "/v1/models/mtcnn/predict", (DATA / f"{photo}.jpg").read_bytes()).json()
        assert found["success"] and not [d for d in found["detections"] if d["score"] >= 0.9]


def test_boxes_are_right_for_a_rotated_and_a_large_copy(gateway):
    upright = post(gateway.url + "/predict", ASTRONAUT, model="mtcnn").json()["detections"][0]["box"]
    original = Image.open(io.BytesIO(ASTRONAUT))
    exif = Image.Exif()
    exif[0x0112] = 6                                          # "rotate 90 CW to view": pixels stored turned
    stored = original.transpose(Image.Transpose.ROTATE_90)
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif.tobytes())
    rotated = post(gateway.url + "/predict", buffer.getvalue(), model="mtcnn").json()["detections"][0]["box"]
    assert max(abs(a - b) for a, b in zip(rotated, upright, strict=True)) < 6

    large = original.resize((3000, 3000), Image.Resampling.BICUBIC)
    box = post(gateway.url + "/predict", png(large), model="mtcnn").json()["detections"][0]["box"]
    scaled = [value * 3000 / 512 for value in upright]
    width = scaled[2] - scaled[0]
    assert max(abs(a - b) for a, b in zip(box, scaled, strict=True)) < 0.06 * width


def test_pipelines_are_listed_with_their_steps(gateway):
    listing = requests.get(gateway.url + "/v1/pipelines", timeout=10).json()["pipelines"]
    by_name = {entry["name"]: entry for entry in listing}
    assert set(by_name) == {"face_crops", "all_classifiers", "ocr", "frames_classify"}
    assert [step["step"] for step in by_name["face_crops"]["steps"]] == ["detect", "classify"]
    assert by_name["face_crops"]["steps"][0]["model"] == "mtcnn"
    missing = post(gateway.url + "/v1/pipelines/nope/predict", ASTRONAUT)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "PIPELINE_NOT_FOUND"


def test_face_crops_classifies_each_face_as_a_direct_predict_of_the_crop_would(gateway):
    body = post(gateway.url + "/v1/pipelines/face_crops/predict", ASTRONAUT).json()
    assert body["success"] and body["pipeline"] == "face_crops" and body["id"]
    assert len(body["detections"]) == 1
    face = body["detections"][0]
    assert face["label"] == "face" and face["score"] >= 0.9 and len(face["predictions"]) == 5
    crop = imaging.decode_image(ASTRONAUT, max_pixels=10**8).crop(tuple(face["crop_box"]))
    direct = post(gateway.url + "/predict", png(crop)).json()
    assert direct["model"] == "efficientnet_lite0"
    assert face["predictions"] == direct["predictions"]
    empty = post(gateway.url + "/v1/pipelines/face_crops/predict", (DATA / "coffee.jpg").read_bytes()).json()
    assert empty["success"] and empty["detections"] == []                    # no face: a success, empty


def test_fan_out_answers_each_served_classifier_as_its_own_predict(gateway):
    body = post(gateway.url + "/v1/pipelines/all_classifiers/predict", (DATA / "cat.jpg").read_bytes()).json()
    assert body["success"] and set(body["results"]) == {"efficientnet_lite0", "efficientnet_lite1"}
    for model, result in body["results"].items():
        own = post(gateway.url + f"/v1/models/{model}/predict", (DATA / "cat.jpg").read_bytes()).json()
        assert result == {"success": True, "model": model, "version": "1", "predictions": own["predictions"]}


def test_a_pipeline_needing_a_model_that_is_not_served_names_it(redis_url, tmp_path, gateway_factory):
    plans = tmp_path / "pipelines.json"
    plans.write_text(json.dumps({"pipelines": [{"name": "faces", "type": "detect_then_classify",
                                                "detect": {"model": "mtcnn"}, "classify": {"model": "resnet50"}}]}))
    web, _ = gateway_factory(make_config(redis_url, pipelines=str(plans), models="mtcnn"))
    answer = post(web.url + "/v1/pipelines/faces/predict", ASTRONAUT)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert "resnet50" in answer.json()["error"]["message"]


def test_a_step_whose_worker_is_missing_times_out_naming_the_step(redis_url, gateway_factory):
    """Web tier only: the detector is served (configured) but no worker runs it."""
    config = make_config(redis_url, models="mtcnn", request_timeout=2.0)
    web, _ = gateway_factory(config)
    answer = post(web.url + "/v1/pipelines/face_crops/predict", ASTRONAUT, timeout=10)
    assert answer.status_code == 504 and answer.json()["error"]["code"] == "TIMEOUT"
    assert "step 1 (detect with mtcnn)" in answer.json()["error"]["message"]


def test_killing_a_worker_mid_pipeline_loses_nothing(redis_url, gateway_factory):
    """Two worker processes serve every model; one is killed while the pipeline's jobs are claimed."""
    config = make_config(redis_url, models="mtcnn", request_timeout=120.0, heartbeat_ttl=1.0, batch_size=1)
    web, _ = gateway_factory(config)
    children = [start_worker_process(config, ARTIFACTS / f"pipeline-worker-{i}.log") for i in range(2)]
    try:
        wait_for(lambda: all(m["versions"][0]["live_workers"] == 2 for m in
                             requests.get(web.url + "/v1/models", timeout=10).json()["models"]), 240, 0.5,
                 message="two worker processes serving both models")
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(6) as pool:
            futures = [pool.submit(post, web.url + "/v1/pipelines/face_crops/predict", ASTRONAUT, 120)
                       for _ in range(6)]
            os.kill(children[0].pid, signal.SIGKILL)
            answers = [future.result() for future in futures]
        assert [a.status_code for a in answers] == [200] * 6, [a.text for a in answers if a.status_code != 200]
        assert all(len(a.json()["detections"]) == 1 and a.json()["detections"][0]["predictions"] for a in answers)
    finally:
        for child in children:
            processes.stop(child, 20)


def test_pipelines_say_whether_they_can_run_and_how_to_fix_them(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url))      # the shipped file; the default serves one classifier
    listed = {p["name"]: p for p in requests.get(web.url + "/v1/pipelines", timeout=10).json()["pipelines"]}
    assert listed["face_crops"]["state"] == "UNAVAILABLE" and "MODELS=mtcnn" in listed["face_crops"]["reason"]
    assert listed["ocr"]["state"] == "UNAVAILABLE" and "MODELS=ocr_det,ocr_rec" in listed["ocr"]["reason"]
    assert listed["all_classifiers"]["state"] == "READY"             # whatever classifiers are served


def test_an_empty_pipelines_setting_serves_none(redis_url, gateway_factory):
    from image_gateway import settings
    assert settings.load({"PIPELINES": ""}).pipelines == ""
    web, _ = gateway_factory(make_config(redis_url, pipelines=""))
    assert requests.get(web.url + "/v1/pipelines", timeout=10).json()["pipelines"] == []
