"""Detector heads `yolo` and `ssd` (models/heads.py) on small ONNX graphs that emit known raw tensors.

Every expected box is worked out by hand below: the head's boxes on the model's input, the letterbox
(or squash) undone to the working image, then the web tier's shrink undone to the original pixels.
The same detector serves as the first step of a detect_then_classify pipeline.
"""
from __future__ import annotations

import base64
import io
import json
import uuid

import numpy as np
import pytest
import requests
from model_files import channel_mean_classifier, constant_outputs_model, version
from PIL import Image
from test_many_models import Gateway

from conftest import make_config, wait_for
from image_gateway.models.errors import ModelError
from image_gateway.models.heads import Limits, decode_ssd, decode_yolo, nms, ssd_output_order, yolo_layout
from image_gateway.models.resizing import fit

LABELS = "cat\ndog\n"
# YOLOv8/11 layout [N, 4 + C, A]: per candidate cx, cy, w, h (input pixels), then cat and dog scores.
CANDIDATES = np.array([
    [32, 32, 16, 8, 0.90, 0.10],     # cat 0.90: box 24..40 x 28..36
    [34, 32, 16, 8, 0.80, 0.10],     # cat 0.80, IoU 112/144 = 0.78 with the first: suppressed
    [34, 32, 16, 8, 0.05, 0.85],     # dog 0.85 on the same place: another class, kept
    [10, 10, 4, 4, 0.10, 0.20],      # dog 0.20: under the 0.25 threshold
    [50, 50, 10, 10, 0.50, 0.00],    # cat 0.50: box 45..55 x 45..55
], np.float32)
YOLO_V8 = CANDIDATES.T[np.newaxis]                                  # [1, 6, 5]
# YOLOv5 layout [N, A, 5 + C]: objectness in column 4, class scores after it; the same answers.
YOLO_V5 = np.array([[[32, 32, 16, 8, 0.9, 1.0, 0.1], [34, 32, 16, 8, 0.9, 0.9, 0.1], [34, 32, 16, 8, 1.0, 0.05, 0.85],
                     [10, 10, 4, 4, 0.5, 0.1, 0.4], [50, 50, 10, 10, 0.5, 1.0, 0.0]]], np.float32)
# A 128x64 image letterboxed into 64x64: scaled by 0.5 to 64x32, 16 rows of padding above. On the image:
# x = x_in / 0.5, y = (y_in - 16) / 0.5, clipped to 128 x 64.
ON_128x64 = [("cat", 0, 0.9, [48.0, 24.0, 80.0, 40.0]), ("dog", 1, 0.85, [52.0, 24.0, 84.0, 40.0]),
             ("cat", 0, 0.5, [90.0, 58.0, 110.0, 64.0])]
# TFLite SSD outputs in its order: boxes (y_min, x_min, y_max, x_max of the input), classes, scores, count.
SSD = {"out_boxes": [[[0.2, 0.1, 0.6, 0.5], [0.0, 0.5, 0.5, 1.0], [0.5, 0.5, 0.9, 0.9], [0.1, 0.1, 0.2, 0.2]]],
       "out_classes": [[1, 2, 1, 2]], "out_scores": [[0.95, 0.6, 0.3, 0.99]], "out_count": [3]}
SSD_LABELS = "???\nperson\nbicycle\n"       # 1-based class ids, as TF's label maps: a placeholder first
LIMITS = Limits(0.25, 0.45, 100)


def png(size: tuple[int, int], paint: dict | None = None) -> bytes:
    """A grey image with the given boxes painted in solid colours."""
    image = Image.new("RGB", size, (128, 128, 128))
    for box, colour in (paint or {}).items():
        image.paste(colour, box)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


def as_tuples(detections: list[dict]) -> list[tuple]:
    return [(d["label"], d["class_id"], d["score"], d["box"]) for d in detections]


# ----------------------------------------------------------------------------------- the heads alone
def test_yolo_layouts_are_told_from_the_shape_and_the_labels():
    assert yolo_layout((84, 8400), 80, None) == (False, False, 80)          # YOLOv8/11
    assert yolo_layout((8400, 84), 80, None) == (True, False, 80)
    assert yolo_layout((25200, 85), 80, None) == (True, True, 80)           # YOLOv5: objectness
    assert yolo_layout((84, 8400), None, None) == (False, False, 80)        # no labels: the smaller axis
    assert yolo_layout((25200, 85), None, True) == (True, True, 80)
    with pytest.raises(ModelError, match="C = 3"):
        yolo_layout((84, 8400), 3, None)


def test_yolo_threshold_class_aware_nms_and_max_detections():
    found = decode_yolo(YOLO_V8[0], 2, None, LIMITS)
    assert found.classes.tolist() == [0, 1, 0] and np.allclose(found.scores, [0.9, 0.85, 0.5])
    assert found.boxes.tolist() == [[24, 28, 40, 36], [26, 28, 42, 36], [45, 45, 55, 55]]
    two = decode_yolo(YOLO_V5[0], 2, None, Limits(0.25, 0.45, 2))
    assert two.classes.tolist() == [0, 1] and np.allclose(two.scores, [0.9, 0.85])
    everything = decode_yolo(YOLO_V8[0], 2, None, Limits(0.25, 0.9, 100))   # IoU 0.78 < 0.9: not suppressed
    assert np.allclose(everything.scores, [0.9, 0.85, 0.8, 0.5])


def test_nms_keeps_the_best_of_overlapping_boxes_of_one_class():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30]], np.float64)
    kept = nms(boxes, np.array([0.5, 0.9, 0.8, 0.1]), np.array([0, 0, 1, 0]), 0.5, 10)
    assert kept.tolist() == [1, 2, 3]           # 0 overlaps 1 by 9/11: gone; 2 is another class


def test_ssd_keeps_the_counted_rows_over_the_threshold():
    found = decode_ssd(np.array(SSD["out_boxes"][0]), np.array(SSD["out_classes"][0]), np.array(SSD["out_scores"][0]),
                       3, (100, 50), Limits(0.4, 0.5, 10))
    assert found.classes.tolist() == [1, 2] and np.allclose(found.scores, [0.95, 0.6])
    assert np.allclose(found.boxes, [[10, 10, 50, 30], [50, 0, 100, 25]])
    assert len(decode_ssd(np.array(SSD["out_boxes"][0]), np.array(SSD["out_classes"][0]),
                          np.array(SSD["out_scores"][0]), None, (100, 50), Limits(0.4, 0.5, 1)).scores) == 1


def test_ssd_outputs_are_found_by_name_else_in_the_tflite_order():
    assert ssd_output_order(["num_detections", "detection_scores", "detection_boxes", "detection_classes",
                             "raw_detection_boxes"]) == (2, 3, 1, 0)
    assert ssd_output_order(["scores", "boxes", "classes"]) == (1, 2, 0, None)
    assert ssd_output_order(["TFLite_Detection_PostProcess", "TFLite_Detection_PostProcess:1",
                             "TFLite_Detection_PostProcess:2", "TFLite_Detection_PostProcess:3"]) == (0, 1, 2, 3)


def test_letterbox_and_squash_map_boxes_back_exactly():
    pixels, placement = fit(np.zeros((64, 128, 3), np.uint8), 64, 64, "letterbox")
    assert pixels.shape == (64, 64, 3) and (pixels[:16] == 114).all() and (pixels[16:48] == 0).all()
    assert placement.to_image(np.array([[24, 28, 40, 36]])).tolist() == [[48, 24, 80, 40]]
    _, squashed = fit(np.zeros((50, 100, 3), np.uint8), 32, 32, "squash")
    assert np.allclose(squashed.to_image(np.array([[3.2, 6.4, 16, 19.2]])), [[10, 10, 50, 30]])


# ------------------------------------------------------------------------------- through the gateway
@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory):
    folder = tmp_path_factory.mktemp("heads")
    repository = folder / "repository"
    yolo = {"kind": "detector", "head": "yolo"}
    version(repository, "yolo_v8", 1, {"model.onnx": constant_outputs_model(folder / "v8.onnx", [1, 3, 64, 64],
                                                                            {"output0": YOLO_V8}),
                                       "labels.txt": LABELS, "config.json": yolo})
    version(repository, "yolo_v5", 1, {"model.onnx": constant_outputs_model(folder / "v5.onnx", [1, 64, 64, 3],
                                                                            {"output0": YOLO_V5}, np.uint8),
                                       "labels.txt": LABELS, "config.json": {**yolo, "max_detections": 2}})
    ssd = constant_outputs_model(folder / "ssd.onnx", [1, 32, 32, 3], SSD, np.uint8)
    version(repository, "ssd", 1, {"model.onnx": ssd, "labels.txt": SSD_LABELS,
                                   "config.json": {"kind": "detector", "head": "ssd", "score_threshold": 0.4}})
    version(repository, "colours", 1, {"model.onnx": channel_mean_classifier(folder / "means.onnx", "NHWC", 16),
                                       "labels.txt": "red\ngreen\nblue\n", "config.json": {"output": "logits"}})
    pipelines = folder / "pipelines.json"
    pipelines.write_text(json.dumps({"pipelines": [{
        "name": "cat_colours", "type": "detect_then_classify",
        "detect": {"model": "yolo_v8", "min_score": 0.5, "labels": ["cat"]}, "classify": {"model": "colours"}}]}))
    config = make_config(redis_server.url, key_prefix=f"heads-{uuid.uuid4().hex[:6]}", model="yolo_v8",
                         model_repository=str(repository), repository_poll_s=0.2, catalog_refresh_s=0.2,
                         pipelines=str(pipelines))
    served = Gateway(config)
    served.repository = repository
    wait_for(lambda: all(served.versions(name).get("1", {}).get("state") == "READY"
                         for name in ("yolo_v8", "yolo_v5", "ssd", "colours")), 60, 0.1, message="the detectors")
    yield served
    served.stop()


def detections(gateway, name: str, image: bytes) -> list[dict]:
    response = gateway.post(f"/v1/models/{name}/predict", image)
    assert response.status_code == 200, response.text
    return response.json()["detections"]


def test_yolo_v8_nchw_float_and_v5_nhwc_uint8_give_the_hand_worked_boxes(gateway):
    listing = gateway.models()
    assert (listing["yolo_v8"]["kind"], listing["yolo_v8"]["input_size"]) == ("detector", 64)
    assert listing["yolo_v8"]["versions"][0]["format"] == "onnx"
    assert as_tuples(detections(gateway, "yolo_v8", png((128, 64)))) == ON_128x64
    assert as_tuples(detections(gateway, "yolo_v5", png((128, 64)))) == ON_128x64[:2]      # max_detections 2


def test_boxes_come_back_in_the_original_pixels_of_a_large_image(gateway):
    """2560x1280 -> the web tier's 1024x512 working image (x 0.4) -> letterboxed into 64x64 (x 1/16: 64x32,
    16 rows of padding above). Input box 24..40 x 28..36 -> working 384..640 x 192..320 -> original
    960..1600 x 480..800."""
    found = detections(gateway, "yolo_v8", png((2560, 1280)))
    assert found[0]["box"] == [960.0, 480.0, 1600.0, 800.0] and found[0]["label"] == "cat"


def test_ssd_squashes_and_maps_normalised_boxes(gateway):
    assert as_tuples(detections(gateway, "ssd", png((100, 50)))) == [
        ("person", 1, 0.95, [10.0, 10.0, 50.0, 30.0]), ("bicycle", 2, 0.6, [50.0, 0.0, 100.0, 25.0])]


def test_v2_infer_answers_the_detector_tensors(gateway):
    image = base64.b64encode(png((128, 64))).decode()
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [image]}]}
    response = requests.post(f"{gateway.url}/v2/models/yolo_v8/infer", json=body, timeout=30)
    outputs = {item["name"]: item["data"] for item in response.json()["outputs"]}
    assert outputs["count"] == [3] and outputs["labels"] == ["cat", "dog", "cat"]
    assert outputs["boxes"] == [value for *_, box in ON_128x64 for value in box]


def test_a_yolo_detector_is_the_first_step_of_a_detect_then_classify_pipeline(gateway):
    image = png((128, 64), {(48, 24, 80, 40): (0, 0, 255), (90, 58, 110, 64): (255, 0, 0)})
    response = requests.post(f"{gateway.url}/v1/pipelines/cat_colours/predict", files={"image": image}, timeout=30)
    assert response.status_code == 200, response.text
    found = response.json()["detections"]
    assert [(d["label"], d["score"], d["crop_box"]) for d in found] == [("cat", 0.9, [48, 24, 80, 40]),
                                                                        ("cat", 0.5, [90, 58, 110, 64])]
    assert [d["predictions"][0]["label"] for d in found] == ["blue", "red"]


@pytest.mark.parametrize(("config", "field"), [
    ({"kind": "detector", "head": "yolo", "iou_threshold": 2}, "iou_threshold"),
    ({"kind": "detector", "head": "retina"}, "head"),
    ({"kind": "detector", "head": "yolo", "resize": "center_crop"}, "resize"),
    ({"kind": "detector", "head": "yolo", "max_detections": 0}, "max_detections"),
    ({"kind": "detector", "head": "yolo", "layout": "NHWC"}, "layout"),
])
def test_a_wrong_detector_config_is_unavailable_naming_the_field(gateway, tmp_path, config, field):
    name = f"wrong_{uuid.uuid4().hex[:8]}"
    model = constant_outputs_model(tmp_path / "m.onnx", [1, 3, 64, 64], {"output0": YOLO_V8})
    version(gateway.repository, name, 1, {"model.onnx": model, "labels.txt": LABELS, "config.json": config})
    wait_for(lambda: gateway.versions(name).get("1", {}).get("state") == "UNAVAILABLE", 30, 0.1, message=name)
    assert f'config.json: field "{field}"' in gateway.versions(name)["1"]["reason"]


def test_labels_that_do_not_fit_the_yolo_output_are_a_reason(gateway, tmp_path):
    model = constant_outputs_model(tmp_path / "m.onnx", [1, 3, 64, 64], {"output0": YOLO_V8})
    version(gateway.repository, "three_labels", 1, {"model.onnx": model, "labels.txt": "a\nb\nc\n",
                                                     "config.json": {"kind": "detector", "head": "yolo"}})
    wait_for(lambda: gateway.versions("three_labels").get("1", {}).get("state") == "UNAVAILABLE", 30, 0.1,
             message="three_labels")
    assert "C = 3 (the labels in labels.txt)" in gateway.versions("three_labels")["1"]["reason"]
