"""Frames pipelines: a model (or another pipeline) on sampled frames of an animated GIF, APNG or WebP.

Real redis-server, the real efficientnet_lite0 in worker threads, the shipped photos made into animations
here with Pillow; hostile GIFs written byte by byte (a huge canvas, thousands of one-pixel frames).
"""
from __future__ import annotations

import base64
import io
import json
import struct
import time

import pytest
import requests
from PIL import Image
from test_many_models import Gateway

from conftest import DATA, make_config
from image_gateway import frames
from image_gateway.web.plans import load_plans, parse_plan

PHOTOS = ("coffee", "rocket", "motorcycle", "cat")
SHIPPED = json.loads((DATA.parent.parent / "image_gateway" / "pipelines.json").read_text())["pipelines"]
EXTRA = [
    {"name": "every_4th", "type": "frames", "model": "efficientnet_lite0", "every_n": 4, "max_frames": 5},
    {"name": "two_a_second", "type": "frames", "model": "efficientnet_lite0", "fps": 2, "max_frames": 8},
    {"name": "frames_fan_out", "type": "frames", "pipeline": "all_classifiers", "max_frames": 3},
]


@pytest.fixture(scope="module")
def gateway(redis_server, tmp_path_factory):
    """The default classifier; the shipped pipelines and three more frames pipelines."""
    path = tmp_path_factory.mktemp("frames") / "pipelines.json"
    path.write_text(json.dumps({"pipelines": SHIPPED + EXTRA}))
    config = make_config(redis_server.url, pipelines=str(path), request_timeout=60.0, key_prefix="frames",
                         max_task_images=50)
    started = Gateway(config)
    yield started
    started.stop()


def photo(name: str, size: int = 192) -> Image.Image:
    return Image.open(DATA / f"{name}.jpg").convert("RGB").resize((size, size), Image.Resampling.BILINEAR)


def animation(images: list[Image.Image], durations: list[int], format_name: str) -> bytes:
    buffer = io.BytesIO()
    images[0].save(buffer, format_name, save_all=True, append_images=images[1:], duration=durations, loop=0)
    return buffer.getvalue()


def cycling_gif(count: int = 40) -> tuple[bytes, list[int]]:
    """`count` frames cycling through PHOTOS, shown 100 and 200 ms in turn."""
    durations = [100 if index % 2 == 0 else 200 for index in range(count)]
    return animation([photo(PHOTOS[index % len(PHOTOS)]) for index in range(count)], durations, "GIF"), durations


def post(gateway, path: str, data: bytes, **fields) -> requests.Response:
    return requests.post(gateway.url + path, files={"image": ("anim", data)}, data=fields, timeout=120)


def still_predictions(gateway, image: Image.Image) -> list[dict]:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "PNG")
    body = post(gateway, "/predict", buffer.getvalue()).json()
    assert body["success"], body
    return body["predictions"]


def decoded_frames(data: bytes) -> list[Image.Image]:
    """Each frame of the file as a still image, as Pillow composes it."""
    image = Image.open(io.BytesIO(data))
    out = []
    for index in range(image.n_frames):
        image.seek(index)
        out.append(image.convert("RGB"))
    return out


def starts(durations: list[int]) -> list[float]:
    return [round(sum(durations[:index]) / 1000, 3) for index in range(len(durations))]


def assert_follows_content(gateway, body: dict, data: bytes, indices: list[int]) -> None:
    """Each frame's answer is the answer /predict gives that frame as a still PNG."""
    assert [frame["index"] for frame in body["frames"]] == indices
    stills = decoded_frames(data)
    for frame in body["frames"]:
        expected = still_predictions(gateway, stills[frame["index"]])
        assert frame["predictions"][0]["label"] == expected[0]["label"], frame["index"]
        for got, want in zip(frame["predictions"], expected, strict=True):
            assert got["label"] == want["label"] and got["probability"] == pytest.approx(want["probability"], abs=2e-3)


def test_a_40_frame_gif_sampled_at_10_frames_follows_its_content_and_merges_by_max(gateway):
    data, durations = cycling_gif()
    response = post(gateway, "/v1/pipelines/frames_classify/predict", data, max_frames="10")
    body = response.json()
    assert response.status_code == 200 and body["success"], body
    assert body["pipeline"] == "frames_classify" and body["frames_total"] == 40
    assert body["each_frame"] == {"model": "efficientnet_lite0", "version": "1"}
    assert body["sampling"] == {"every_n": 1, "max_frames": 10}
    assert len(body["frames"]) == 10
    assert [frame["timestamp"] for frame in body["frames"]] == starts(durations)[:10]
    assert_follows_content(gateway, body, data, list(range(10)))
    tops = [frame["predictions"][0]["label"] for frame in body["frames"]]
    assert len(set(tops)) >= 3, tops                                     # the content changes, so does top-1
    assert tops[:4] == tops[4:8]                                         # ... and it cycles as the photos do
    best: dict[str, tuple[float, int]] = {}
    for frame in body["frames"]:
        for prediction in frame["predictions"]:
            if prediction["probability"] > best.get(prediction["label"], (-1.0, 0))[0]:
                best[prediction["label"]] = (prediction["probability"], frame["index"])
    merged = body["merge"]["max"]
    assert {entry["label"]: (entry["probability"], entry["index"]) for entry in merged} == best
    assert [entry["probability"] for entry in merged] == sorted((p for p, _ in best.values()), reverse=True)


def test_an_apng_an_animated_webp_and_a_still_image(gateway):
    images = [photo(name) for name in ("coffee", "rocket", "coffee", "motorcycle", "rocket")]
    durations = [150, 250, 100, 300, 200]
    for format_name in ("PNG", "WEBP"):
        data = animation(images, durations, format_name)
        body = post(gateway, "/v1/pipelines/frames_classify/predict", data).json()
        assert body["success"] and body["frames_total"] == 5, (format_name, body)
        assert [frame["timestamp"] for frame in body["frames"]] == starts(durations), format_name
        assert_follows_content(gateway, body, data, [0, 1, 2, 3, 4])
    jpeg = (DATA / "coffee.jpg").read_bytes()
    body = post(gateway, "/v1/pipelines/frames_classify/predict", jpeg).json()
    assert body["success"] and body["frames_total"] == 1
    assert [(frame["index"], frame["timestamp"]) for frame in body["frames"]] == [(0, 0.0)]
    direct = post(gateway, "/predict", jpeg).json()["predictions"]
    assert body["frames"][0]["predictions"][0]["label"] == direct[0]["label"] == "espresso"
    assert body["merge"]["max"][0]["label"] == "espresso"


def test_plain_predict_still_classifies_the_first_frame(gateway):
    data, _ = cycling_gif(8)
    first = decoded_frames(data)[0]
    assert post(gateway, "/predict", data).json()["predictions"] == still_predictions(gateway, first)


def test_every_n_and_fps_choose_the_frames_and_a_request_may_only_lower_max_frames(gateway):
    durations = [300] * 12               # frames start at 0, 0.3, 0.6 ... s; the animation lasts 3.6 s
    data = animation([photo(PHOTOS[index % 4], 96) for index in range(12)], durations, "GIF")
    every = post(gateway, "/v1/pipelines/every_4th/predict", data).json()
    assert [(f["index"], f["timestamp"]) for f in every["frames"]] == [(0, 0.0), (4, 1.2), (8, 2.4)]
    assert every["sampling"] == {"every_n": 4, "max_frames": 5}
    # 2 fps: the frame showing at 0, 0.5, 1.0 ... 3.5 s
    fps = post(gateway, "/v1/pipelines/two_a_second/predict", data).json()
    assert [(f["index"], f["timestamp"]) for f in fps["frames"]] == \
        [(0, 0.0), (1, 0.3), (3, 0.9), (5, 1.5), (6, 1.8), (8, 2.4), (10, 3.0), (11, 3.3)]
    fewer = post(gateway, "/v1/pipelines/two_a_second/predict", data, max_frames="3").json()
    assert [f["index"] for f in fewer["frames"]] == [0, 1, 3] and fewer["sampling"]["max_frames"] == 3
    more = requests.post(gateway.url + "/v1/pipelines/every_4th/predict", timeout=60, json={
        "image": base64.b64encode(data).decode(), "max_frames": 100}).json()
    assert more["sampling"]["max_frames"] == 5 and len(more["frames"]) == 3     # never above the pipeline's
    for bad in ("0", "-2", "many", "1.5"):
        refused = post(gateway, "/v1/pipelines/every_4th/predict", data, max_frames=bad)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "INVALID_PARAMETER", bad


def test_a_frames_pipeline_over_another_pipeline(gateway):
    data, _ = cycling_gif(6)
    body = post(gateway, "/v1/pipelines/frames_fan_out/predict", data).json()
    assert body["success"] and body["each_frame"] == {"pipeline": "all_classifiers"}
    assert [frame["index"] for frame in body["frames"]] == [0, 1, 2]
    stills = decoded_frames(data)
    for frame in body["frames"]:
        answer = frame["results"]["efficientnet_lite0"]
        assert answer["predictions"][0]["label"] == still_predictions(gateway, stills[frame["index"]])[0]["label"]


def hostile_gif(width: int, height: int, count: int, delay_cs: int = 2) -> bytes:
    """A `width` x `height` canvas and `count` frames of one pixel each: tiny to send, costly to decode."""
    out = b"GIF89a" + struct.pack("<HH", width, height) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff"
    for index in range(count):
        out += b"\x21\xf9\x04\x04" + struct.pack("<H", delay_cs) + b"\x00\x00"          # delay, no disposal
        out += b"\x2c" + struct.pack("<HHHH", index % width, 0, 1, 1) + b"\x00" + b"\x02\x02\x44\x01\x00"
    return out + b"\x3b"


def test_a_hostile_animation_is_refused_with_413_and_the_service_keeps_serving(gateway):
    data = hostile_gif(5000, 5000, 3000)                 # 25 MP x 3000 frames, 70 KB
    assert len(data) < 100_000
    started = time.monotonic()
    refused = post(gateway, "/v1/pipelines/frames_classify/predict", data)       # every frame, 32 of them
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "IMAGE_TOO_LARGE"
    assert "MAX_ANIMATION_MP" in refused.json()["error"]["message"]
    assert time.monotonic() - started < 2                   # refused before decoding (every_n says how far)
    refused = post(gateway, "/v1/pipelines/two_a_second/predict", data)          # 20 ms frames: 25 per sample
    assert refused.status_code == 413 and refused.json()["error"]["code"] == "IMAGE_TOO_LARGE"
    too_wide = post(gateway, "/v1/pipelines/frames_classify/predict", hostile_gif(10000, 5000, 3))
    assert too_wide.status_code == 413 and too_wide.json()["error"]["code"] == "IMAGE_TOO_LARGE"   # MAX_IMAGE_PIXELS
    broken = post(gateway, "/v1/pipelines/frames_classify/predict", cycling_gif(4)[0][:3000])
    assert broken.status_code == 400 and broken.json()["error"]["code"] == "IMAGE_UNREADABLE"
    assert post(gateway, "/predict", (DATA / "coffee.jpg").read_bytes()).json()["predictions"][0]["label"] == "espresso"
    assert post(gateway, "/v1/pipelines/frames_classify/predict", cycling_gif(4)[0]).json()["success"]


def test_sampling_keeps_the_kept_frames_in_the_decode_budget():
    """Within the block the canvas and the kept frames hold their pixels of the budget; after it, none."""
    data, _ = cycling_gif(6)
    budget = frames.imaging._budget
    free = budget.free
    limits = frames.Limits(40_000_000, 400_000_000, time.time() + 30)
    with frames.sampled_frames(data, frames.Sampling(2, None, 2), limits, Image.Image.copy, lambda w, h: w * h) as got:
        assert [frame.index for frame in got.frames] == [0, 2]
        assert free - budget.free == 192 * 192 * 3          # the canvas, and 2 frames kept of its size
    assert budget.free == free


def test_tasks_take_a_frames_pipeline_and_count_its_frames_against_max_task_images(gateway):
    data, _ = cycling_gif(12)
    files = [("image", ("a.gif", data)), ("image", ("b.gif", data))]
    too_many = requests.post(gateway.url + "/v1/tasks", files=files, data={"pipeline": "frames_classify"}, timeout=30)
    assert too_many.status_code == 413 and too_many.json()["error"]["code"] == "TASK_TOO_LARGE"   # 2 x 32 > 50
    created = requests.post(gateway.url + "/v1/tasks", files=files, timeout=30,
                            data={"pipeline": "frames_classify", "max_frames": "4"})
    assert created.status_code == 202, created.text
    status_url = gateway.url + created.json()["status_url"]
    deadline = time.monotonic() + 120
    while (report := requests.get(status_url, timeout=10).json())["state"] != "DONE":
        assert time.monotonic() < deadline, report
        time.sleep(0.2)
    assert [result["index"] for result in report["results"]] == [0, 1]
    for result in report["results"]:
        assert result["success"] and result["pipeline"] == "frames_classify", result
        assert [frame["index"] for frame in result["frames"]] == [0, 1, 2, 3]


def test_frames_plans_are_checked_and_listed(gateway):
    answer = requests.get(gateway.url + "/v1/pipelines", timeout=10).json()
    listing = {entry["name"]: entry for entry in answer["pipelines"]}
    assert listing["frames_classify"]["state"] == "READY"
    assert listing["frames_classify"]["steps"] == [{"step": "frames", "every_n": 1, "max_frames": 32},
                                                   {"step": "each_frame", "model": "efficientnet_lite0"}]
    assert listing["frames_fan_out"]["steps"][1] == {"step": "each_frame", "pipeline": "all_classifiers"}
    for bad in ({"name": "x", "type": "frames"}, {"name": "x", "type": "frames", "model": "m", "every_n": 0},
                {"name": "x", "type": "frames", "model": "m", "every_n": 2, "fps": 1}):
        with pytest.raises(ValueError):
            parse_plan(bad)


def test_a_frames_pipeline_of_a_missing_or_frames_pipeline_is_refused_at_load(tmp_path):
    for inner in ("nope", "again"):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({"pipelines": [{"name": "again", "type": "frames", "pipeline": inner}]}))
        with pytest.raises(ValueError, match="not a pipeline of the file"):
            load_plans(str(path))


def test_the_client_prints_a_line_per_frame_then_the_best_labels():
    from image_gateway.client.http import format_result

    body = {"success": True, "pipeline": "frames_classify",
            "frames": [{"index": 0, "timestamp": 0.0, "predictions": [{"label": "espresso", "probability": 0.86}]},
                       {"index": 4, "timestamp": 1.25, "detections": [{"label": "face", "score": 0.99}]},
                       {"index": 8, "timestamp": 2.5, "detections": []}],
            "merge": {"max": [{"label": "espresso", "probability": 0.86, "index": 0}]}}
    assert format_result(200, body).splitlines() == [
        "frame 0 at 0.00 s: espresso: 0.8600", "frame 4 at 1.25 s: 1 found, first face: 0.9900",
        "frame 8 at 2.50 s: nothing found", "best of 3 frames:", "1. espresso: 0.8600 (frame 0)"]
