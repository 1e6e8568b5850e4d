"""OCR end to end: the pipeline `ocr` over the built-in models ocr_det and ocr_rec (rapidocr's PP-OCRv6 ONNX
files on ONNX Runtime), each on its own queue.

Real redis-server, real worker threads and processes, images rendered here with Pillow and a DejaVu font
(Debian's fonts-dejavu-core): printed lines, and a photo-like page (noisy background, turned a few degrees,
JPEG). No image is committed.
"""
from __future__ import annotations

import io
import math
import os
import re
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from test_many_models import Gateway

from conftest import ARTIFACTS, WorkerThread, make_config, start_worker_process, wait_for
from image_gateway import processes, protocol
from image_gateway.client.http import format_result
from image_gateway.models.text_lines import reading_order
from image_gateway.web.plans import parse_plan

FONT = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
LINES = ("The quick brown fox jumps over the lazy dog.",
         "Invoice 2024-117: total $1,284.50 (paid)",
         "Queues batch text lines from many requests",
         "HELLO WORLD 42")
PHOTO_LINES = ("Meet me at the station at 7:45 pm",
               "Platform 9, coach B, seat 23",
               "Bring the blue umbrella and a map")
OCR_URL = "/v1/pipelines/ocr/predict"


def font(size: int) -> ImageFont.FreeTypeFont:
    if not FONT.is_file():
        pytest.fail(f"{FONT} is missing: install Debian's fonts-dejavu-core (apt-get install fonts-dejavu-core)",
                    pytrace=False)
    return ImageFont.truetype(str(FONT), size)


def printed(lines, size: int = 28, width: int = 900, background="white", ink="black"):
    """Lines of text, one under the other: (the image, each line's ink box [x0, y0, x1, y1])."""
    face, step, margin = font(size), round(size * 2.1), round(size * 1.2)
    image = Image.new("RGB", (width, 2 * margin + step * len(lines)), background)
    draw = ImageDraw.Draw(image)
    boxes = []
    for index, line in enumerate(lines):
        origin = (margin, margin + index * step)
        draw.text(origin, line, font=face, fill=ink)
        boxes.append(draw.textbbox(origin, line, font=face))
    return image, boxes


def encoded(image: Image.Image, kind: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, kind, **options)
    return buffer.getvalue()


def photo_like(angle: float = 4.0, seed: int = 7):
    """PHOTO_LINES in dark grey on a mottled, noisy paper, the whole turned `angle` degrees (counter-clockwise),
    noise again, then JPEG: (the JPEG bytes, each line's ink box as four corners in the turned image)."""
    rng = np.random.default_rng(seed)
    flat, boxes = printed(PHOTO_LINES, size=34, width=820, ink=(45, 40, 50))
    height, width = flat.height, flat.width
    yy, xx = np.mgrid[0:height, 0:width]
    paper = 200 + 30 * np.sin(xx / 97.0) * np.cos(yy / 61.0) + rng.normal(0, 14, (height, width))
    blotches = Image.fromarray(rng.integers(0, 255, (height // 16, width // 16), dtype=np.uint8)).resize(
        (width, height), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    paper = paper + (np.asarray(blotches, dtype=np.float64) - 128) * 0.25
    ink = np.asarray(flat.convert("L"), dtype=np.float64) / 255.0        # 1 on paper, 0 on ink
    tint = np.array([1.0, 0.96, 0.88])
    pixels = (paper[..., None] * tint) * ink[..., None] + np.asarray(flat, dtype=np.float64) * (1 - ink[..., None])
    page = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    turned = page.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True, fillcolor=(120, 110, 100))
    noisy = np.asarray(turned, dtype=np.float64) + rng.normal(0, 8, (turned.height, turned.width, 3))
    photo = Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    corners = [turn_points([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], angle, page.size, turned.size)
               for x0, y0, x1, y1 in boxes]
    return encoded(photo, "JPEG", quality=88), corners


def turn_points(points, angle: float, size, turned_size) -> list[tuple[float, float]]:
    """Where Pillow's rotate(angle, expand=True) puts `points` of an image of `size`."""
    theta = math.radians(angle)
    cx, cy = size[0] / 2, size[1] / 2
    tx, ty = turned_size[0] / 2, turned_size[1] / 2
    return [(tx + math.cos(theta) * (x - cx) + math.sin(theta) * (y - cy),
             ty - math.sin(theta) * (x - cx) + math.cos(theta) * (y - cy)) for x, y in points]


def inside(point, quad, tolerance: float) -> bool:
    """Whether `point` lies in the convex quadrilateral `quad` (corners clockwise on screen), or within
    `tolerance` px of it."""
    for (ax, ay), (bx, by) in zip(quad, quad[1:] + quad[:1], strict=True):
        cross = (bx - ax) * (point[1] - ay) - (by - ay) * (point[0] - ax)
        if cross / math.hypot(bx - ax, by - ay) < -tolerance:
            return False
    return True


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, left in enumerate(a, 1):
        previous, row[0] = row[0], i
        for j, right in enumerate(b, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (left != right))
    return row[-1]


def post(url: str, data: bytes, timeout: float = 120, **fields) -> requests.Response:
    return requests.post(url, files={"image": ("page.png", data)}, data=fields, timeout=timeout)


def rec_batches(url: str) -> tuple[float, float, float]:
    """ocr_rec's batch-size histogram on the gateway's /metrics: (lines, batches, batches of one line)."""
    series = {}
    for line in requests.get(url + "/metrics", timeout=10).text.splitlines():
        if line.startswith("gateway_batch_size_") and 'model="ocr_rec"' in line:
            name, value = line.rsplit(" ", 1)
            series[re.sub(r'(model|version)="[^"]*",?', "", name).replace(",}", "}")] = float(value)
    return (series.get("gateway_batch_size_sum{}", 0.0), series.get("gateway_batch_size_count{}", 0.0),
            series.get('gateway_batch_size_bucket{le="1.0"}', 0.0))


def ocr_config(redis_url: str, **overrides):
    values = {"model": "ocr_det", "models": "ocr_det,ocr_rec", "request_timeout": 120.0}
    return make_config(redis_url, **{**values, **overrides})


@pytest.fixture(scope="module")
def gateway(redis_server):
    """The web tier and a ModelHost serving ocr_det and ocr_rec in this process."""
    started = Gateway(ocr_config(redis_server.url, key_prefix="ocr", batch_size=8))
    yield started
    started.stop()


# ----------------------------------------------------------------------------------- the pipeline
def test_printed_lines_are_read_exactly_in_reading_order_inside_their_boxes(gateway):
    # 2400 px wide: larger than the detector's 2000 px working image, so the boxes are mapped back.
    image, ink = printed(LINES, size=72, width=2400)
    answer = post(gateway.url + OCR_URL, encoded(image))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] and body["pipeline"] == "ocr" and body["id"]
    assert body["models"] == {"detect": {"model": "ocr_det", "version": "1"},
                              "recognize": {"model": "ocr_rec", "version": "1"}}
    assert [text["text"] for text in body["texts"]] == list(LINES), body["texts"]
    for text, (x0, y0, x1, y1) in zip(body["texts"], ink, strict=True):
        assert 0.5 <= text["score"] <= 1.0
        quad = text["box"]
        assert len(quad) == 4 and all(len(point) == 2 for point in quad)
        assert all(inside(corner, quad, 2.0) for corner in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]), (quad, ink)
        slack = 0.5 * (y1 - y0)                                        # and not much more than the line
        assert all(x0 - slack <= x <= x1 + slack and y0 - slack <= y <= y1 + slack for x, y in quad), (quad, ink)


def test_a_photo_like_page_reads_at_least_90_percent_of_its_characters(gateway):
    photo, corners = photo_like()
    body = post(gateway.url + OCR_URL, photo).json()
    assert body["success"], body
    read = "\n".join(text["text"] for text in body["texts"])
    expected = "\n".join(PHOTO_LINES)
    accuracy = 1 - edit_distance(read, expected) / len(expected)
    assert accuracy >= 0.9, (accuracy, read)
    assert len(body["texts"]) == len(PHOTO_LINES), body["texts"]
    for text, line in zip(body["texts"], corners, strict=True):               # turned boxes around turned lines
        assert all(inside(corner, text["box"], 4.0) for corner in line), (text["box"], line)


def test_an_image_without_text_answers_no_texts(gateway):
    blank = Image.new("RGB", (320, 240), (240, 240, 235))
    body = post(gateway.url + OCR_URL, encoded(blank)).json()
    assert body["success"] and body["texts"] == []
    assert format_result(200, body) == "(no text found)"


def test_eight_concurrent_requests_batch_their_lines_in_the_recogniser(gateway):
    """One line per image: a recogniser batch of more than one line holds lines of different requests."""
    line, _ = printed([LINES[3]], width=420)
    image = Image.new("RGB", (420, 420), "white")           # square: the detector sees at least 736 px a side
    image.paste(line, (0, 140))
    data = encoded(image)
    before = rec_batches(gateway.url)
    with ThreadPoolExecutor(8) as pool:
        bodies = [answer.json() for answer in pool.map(lambda _: post(gateway.url + OCR_URL, data), range(8))]
    assert [[text["text"] for text in body["texts"]] for body in bodies] == [[LINES[3]]] * 8, bodies
    # A worker counts a batch just after answering it: wait until all 8 lines are counted.
    after = wait_for(lambda: (now := rec_batches(gateway.url))[0] - before[0] >= 8 and now, 10, 0.05,
                     "the recogniser's metrics to count the 8 lines")
    lines, batches, singles = (a - b for a, b in zip(after, before, strict=True))
    assert lines == 8 and batches - singles >= 1, (before, after)      # some batch held lines of several requests
    assert batches < 8


def test_the_two_models_answer_alone_as_detectors(gateway):
    image, ink = printed(LINES[:2])
    found = post(gateway.url + "/v1/models/ocr_det/predict", encoded(image)).json()
    assert found["success"] and [d["label"] for d in found["detections"]] == ["text", "text"]
    assert set(found["detections"][0]["landmarks"]) == {"top_left", "top_right", "bottom_right", "bottom_left"}
    assert found["detections"][0]["box"][1] < ink[0][1] < ink[0][3] < found["detections"][0]["box"][3]
    line = image.crop((0, ink[1][1] - 12, image.width, ink[1][3] + 12))
    read = post(gateway.url + "/v1/models/ocr_rec/predict", encoded(line)).json()
    assert read["success"] and [d["label"] for d in read["detections"]] == [LINES[1]], read
    listed = {entry["name"]: entry for entry in requests.get(gateway.url + "/v1/models", timeout=10).json()["models"]}
    assert listed["ocr_det"]["kind"] == listed["ocr_rec"]["kind"] == "detector"
    assert {v["runtime"] for name in ("ocr_det", "ocr_rec") for v in listed[name]["versions"]} == {"onnxruntime"}


def test_a_task_runs_the_ocr_pipeline_and_the_client_prints_one_line_per_text(gateway):
    image, _ = printed(LINES[2:])
    files = [("image", ("first.png", encoded(image))), ("image", ("second.png", encoded(image)))]
    created = requests.post(gateway.url + "/v1/tasks", files=files, data={"pipeline": "ocr"}, timeout=60)
    assert created.status_code == 202, created.text
    status_url = gateway.url + created.json()["status_url"]
    done = wait_for(lambda: (report := requests.get(status_url, timeout=10).json())["state"] == "DONE" and report,
                    120, 0.2, "the OCR task")
    assert (done["total"], done["done"], done["failed"]) == (2, 2, 0)
    for result in done["results"]:
        assert result["pipeline"] == "ocr" and [t["text"] for t in result["texts"]] == list(LINES[2:])
    printed_lines = format_result(200, done["results"][0]).splitlines()
    assert len(printed_lines) == 2 and printed_lines[0].startswith(f"1. {LINES[2]}: 0.9")
    assert printed_lines[1].startswith(f"2. {LINES[3]}: ")


# ------------------------------------------------------------------------------------ failures
def test_the_pipeline_names_a_missing_model_as_the_other_pipelines_do(redis_url, gateway_factory):
    web, _ = gateway_factory(make_config(redis_url, models="ocr_det"))
    image, _ = printed(LINES[:1])
    answer = post(web.url + OCR_URL, encoded(image), timeout=30)
    assert answer.status_code == 404 and answer.json()["error"]["code"] == "MODEL_NOT_FOUND"
    assert "ocr_rec" in answer.json()["error"]["message"]


def test_kill_9_of_the_recognisers_worker_mid_request_loses_no_line(redis_url, redis_client, gateway_factory):
    """ocr_det in a worker thread here; ocr_rec in two worker processes, one killed while it holds a line."""
    from image_gateway.models import load_ocr_model

    config = ocr_config(redis_url, batch_size=1, heartbeat_ttl=1.0)
    web, _ = gateway_factory(config)
    detector = WorkerThread(config, load_ocr_model("ocr_det"))
    children = [start_worker_process(config, ARTIFACTS / f"ocr-rec-worker-{i}.log", args=("--model", "ocr_rec"))
                for i in range(2)]
    try:
        queue = protocol.JobQueue(redis_client, "ocr_rec", config.key_prefix)
        workers = wait_for(lambda: len(queue.live_workers(5)) == 2 and queue.live_workers(5), 180, 0.2,
                           "two ocr_rec worker processes")
        victim_id = next(w for w in workers if queue.worker_info(w)["pid"] == str(children[0].pid))
        image, _ = printed(LINES * 2)
        with ThreadPoolExecutor(3) as pool:
            futures = [pool.submit(post, web.url + OCR_URL, encoded(image)) for _ in range(3)]
            wait_for(lambda: redis_client.llen(queue.keys.processing(victim_id)) > 0, 120, 0.002,
                     "the victim to hold a line")
            os.kill(children[0].pid, signal.SIGKILL)
            answers = [future.result() for future in futures]
        assert [a.status_code for a in answers] == [200] * 3, [a.text for a in answers]
        assert all([t["text"] for t in a.json()["texts"]] == list(LINES * 2) for a in answers)
        assert queue.stats()["requeued"] >= 1                          # the victim's line was read again
    finally:
        detector.stop()
        for child in children:
            processes.stop(child, 20)


# ----------------------------------------------------------------------------- the parts, alone
def test_a_line_reads_the_same_alone_and_in_a_batch_of_other_widths():
    from image_gateway.models import load_ocr_model

    recognizer = load_ocr_model("ocr_rec")
    page, ink = printed(LINES, size=32)
    lines = [np.asarray(page.crop((x0 - 8, y0 - 8, x1 + 8, y1 + 8))) for x0, y0, x1, y1 in ink]
    assert len({recognizer.padded_width(line) for line in lines}) > 1          # padded to different widths
    together = recognizer.detect(lines)
    assert [found[0]["label"] for found in together] == list(LINES)
    assert [recognizer.detect([line])[0] for line in lines] == together
    assert recognizer.detect([np.full((48, 200, 3), 255, np.uint8)]) == [[]]          # nothing to read
    with pytest.raises(ValueError):
        recognizer.detect([np.zeros((48, 200), np.uint8)])


def test_reading_order_is_lines_top_down_each_left_to_right():
    def quad(x, y, w=100, h=30, tilt=0.0):
        return [[x, y], [x + w, y + tilt], [x + w, y + h + tilt], [x, y + h]]
    # two lines; the right word of the first sits a little lower (tilted), the second line's left word later
    quads = [quad(300, 108), quad(10, 100, tilt=6), quad(160, 104), quad(200, 160), quad(10, 162)]
    assert reading_order(quads) == [1, 2, 0, 4, 3]
    assert reading_order([]) == []


def test_the_ocr_plan_parses_and_refuses_bad_settings():
    plan = parse_plan({"name": "read", "type": "ocr", "detect": {"model": "ocr_det"},
                       "recognize": {"model": "ocr_rec", "min_score": 0.7}})
    assert (plan.max_side, plan.max_texts, plan.min_score) == (2000, 200, 0.7)
    assert [step["step"] for step in plan.steps()] == ["detect", "recognize"]
    with pytest.raises(ValueError, match="max_side"):
        parse_plan({"name": "read", "type": "ocr", "detect": {"model": "ocr_det", "max_side": 0},
                    "recognize": {"model": "ocr_rec"}})
