"""The built-in face detector `mtcnn` (models/detector.py) and the working-size geometry
(models/geometry.py): the real model on the real photos in tests/data, offline."""
from __future__ import annotations

import io
import socket
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image

from image_gateway import imaging
from image_gateway.models.detector import MTCNN_SPEC, load_detector
from image_gateway.models.errors import ModelNotFoundError
from image_gateway.models.geometry import DEFAULT_MAX_SIDE, scale_detections, working_size

DATA = Path(__file__).resolve().parent / "data"
PHOTOS = ("astronaut", "coffee", "cat", "motorcycle", "rocket")
LANDMARKS = {"left_eye", "right_eye", "nose", "mouth_left", "mouth_right"}
MAX_PIXELS = 20_000_000
# Located by eye on a 4x crop of astronaut.jpg (512x512): the eyes, the nose tip and the middle of
# the mouth; the face's centre lies between the eyes and the mouth.
HAND_CHECKED = {"left_eye": (202, 100), "right_eye": (246, 103), "nose": (224, 125)}
MOUTH_MIDDLE = (224, 145)
FACE_CENTRE_REGION = (205, 100, 245, 140)  # x_min, y_min, x_max, y_max


def refuse_network(*args, **kwargs):
    raise AssertionError("the detector tried to use the network")


@pytest.fixture(scope="module")
def detector():
    """Loaded and warmed up with every socket connection refused: the weights are in the wheel."""
    with mock.patch.object(socket.socket, "connect", refuse_network), \
            mock.patch.object(socket.socket, "connect_ex", refuse_network), \
            mock.patch.object(socket, "getaddrinfo", refuse_network):
        loaded = load_detector()
        loaded.warm_up()
    return loaded


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    return {name: np.asarray(Image.open(DATA / f"{name}.jpg").convert("RGB")) for name in PHOTOS}


def jpeg_bytes(image: Image.Image, exif: Image.Exif | None = None) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=95, **({"exif": exif.tobytes()} if exif else {}))
    return buffer.getvalue()


def detect_as_web_tier(detector, data: bytes, max_side: int) -> tuple[tuple[int, int], list[dict]]:
    """What the web tier does: decode (EXIF-rotated RGB), shrink to the working size, detect,
    map the boxes back to the decoded image's pixels."""
    image = imaging.decode_image(data, max_pixels=MAX_PIXELS)
    width, height, scale = working_size(image.width, image.height, max_side)
    if scale != 1.0:
        image_for_model = image.resize((width, height), Image.Resampling.BILINEAR)
    else:
        image_for_model = image
    answer = detector.detect([np.asarray(image_for_model)])[0]
    return image.size, scale_detections(answer, scale, image.size)


def inside(point, box) -> bool:
    x, y = point
    return box[0] <= x <= box[2] and box[1] <= y <= box[3]


def iou(a, b) -> float:
    overlap_w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    overlap_h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = overlap_w * overlap_h
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / area


# ---- the model on the photos ----------------------------------------------------------------

def test_spec_is_a_face_detector(detector):
    assert detector.spec is MTCNN_SPEC
    assert (detector.spec.name, detector.spec.kind, detector.spec.labels) == ("mtcnn", "detector", ("face",))
    assert detector.spec.input_size == DEFAULT_MAX_SIDE


def test_astronaut_face_is_found_around_the_face(detector, photos):
    faces = detector.detect([photos["astronaut"]])[0]
    confident = [face for face in faces if face["score"] >= 0.9]
    assert len(confident) == 1, faces
    face = confident[0]
    assert face["label"] == "face" and face["score"] <= 1.0
    box = face["box"]
    centre = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    assert inside(centre, FACE_CENTRE_REGION), box
    assert 60 <= box[2] - box[0] <= 140 and 60 <= box[3] - box[1] <= 160, box
    for point in (*HAND_CHECKED.values(), MOUTH_MIDDLE):
        assert inside(point, box), (point, box)
    assert set(face["landmarks"]) == LANDMARKS
    for name, (x, y) in HAND_CHECKED.items():
        found_x, found_y = face["landmarks"][name]
        assert abs(found_x - x) <= 6 and abs(found_y - y) <= 6, (name, face["landmarks"][name])
    mouth_x = (face["landmarks"]["mouth_left"][0] + face["landmarks"]["mouth_right"][0]) / 2
    assert abs(mouth_x - MOUTH_MIDDLE[0]) <= 6


def test_answer_shape_and_rounding(detector, photos):
    face = detector.detect([photos["astronaut"]])[0][0]
    assert set(face) == {"label", "score", "box", "landmarks"}
    assert isinstance(face["score"], float) and face["score"] == round(face["score"], 6)
    coordinates = [*face["box"], *(value for point in face["landmarks"].values() for value in point)]
    assert all(isinstance(value, float) and value == round(value, 2) for value in coordinates)
    x_min, y_min, x_max, y_max = face["box"]
    assert 0 <= x_min < x_max <= 512 and 0 <= y_min < y_max <= 512


@pytest.mark.parametrize("name", ["coffee", "cat", "motorcycle", "rocket"])
def test_photos_without_people_give_no_confident_face(detector, photos, name):
    faces = detector.detect([photos[name]])[0]
    assert not [face for face in faces if face["score"] >= 0.9], faces


def test_mixed_size_batch_equals_one_image_at_a_time(detector, photos):
    """Sizes differ, and the face is in an image after one without: mtcnn 1.0.0's own padded
    batching would misplace that face."""
    astronaut = photos["astronaut"]
    batch = [photos["coffee"], astronaut, photos["cat"], np.ascontiguousarray(astronaut[:, ::-1]), astronaut]
    answers = detector.detect(batch)
    assert answers == [detector.detect([image])[0] for image in batch]
    assert answers[1] == answers[4] and len(answers[1]) == 1
    mirrored = answers[3][0]["box"]
    assert abs((512 - mirrored[2]) - answers[1][0]["box"][0]) <= 4


def test_detections_are_sorted_by_score(detector):
    two_faces = Image.new("RGB", (1024, 512))
    photo = Image.open(DATA / "astronaut.jpg").convert("RGB")
    two_faces.paste(photo, (0, 0))
    two_faces.paste(photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT).reduce(2), (600, 100))
    faces = detector.detect([np.asarray(two_faces)])[0]
    confident = [face for face in faces if face["score"] >= 0.9]
    assert len(confident) == 2
    scores = [face["score"] for face in faces]
    assert scores == sorted(scores, reverse=True)


def test_uint8_and_float32_inputs_agree(detector, photos):
    astronaut = photos["astronaut"]
    assert detector.detect([astronaut.astype(np.float32)]) == detector.detect([astronaut])


@pytest.mark.parametrize("shape", [(1, 1, 3), (11, 11, 3), (12, 12, 3), (20, 20, 3), (10, 900, 3)])
def test_tiny_and_thin_images_give_no_faces(detector, shape):
    noise = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    assert detector.detect([noise]) == [[]]


def test_empty_batch(detector):
    assert detector.detect([]) == []


@pytest.mark.parametrize("bad", [
    np.zeros((32, 32, 3), np.float64), np.zeros((32, 32), np.uint8), np.zeros((32, 32, 4), np.uint8),
    np.zeros((0, 32, 3), np.uint8), "not an array",
])
def test_bad_images_are_refused(detector, bad):
    with pytest.raises(ValueError):
        detector.detect([np.zeros((32, 32, 3), np.uint8), bad])


def test_unknown_detector_name():
    with pytest.raises(ModelNotFoundError):
        load_detector("yolo")


# ---- the web tier's path: EXIF rotation and large images ------------------------------------

@pytest.mark.parametrize("orientation, rotate", [
    (6, Image.Transpose.ROTATE_90), (8, Image.Transpose.ROTATE_270), (3, Image.Transpose.ROTATE_180),
])
@pytest.mark.parametrize("max_side", [DEFAULT_MAX_SIDE, 320])
def test_boxes_are_right_for_an_exif_rotated_copy(detector, orientation, rotate, max_side):
    upright = Image.open(DATA / "astronaut.jpg").convert("RGB").crop((0, 0, 512, 384))
    expected = detector.detect([np.asarray(upright)])[0]
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: how a viewer must turn the stored pixels
    size, faces = detect_as_web_tier(detector, jpeg_bytes(upright.transpose(rotate), exif), max_side)
    assert size == (512, 384)
    assert len(faces) == len(expected) == 1
    assert np.allclose(faces[0]["box"], expected[0]["box"], atol=4), (faces, expected)
    for name, point in faces[0]["landmarks"].items():
        assert np.allclose(point, expected[0]["landmarks"][name], atol=4), name


def test_boxes_are_right_for_a_large_copy(detector, photos):
    original = detector.detect([photos["astronaut"]])[0]
    large = Image.fromarray(photos["astronaut"]).resize((3000, 3000), Image.Resampling.BICUBIC)
    size, faces = detect_as_web_tier(detector, jpeg_bytes(large), DEFAULT_MAX_SIDE)
    assert size == (3000, 3000)
    assert len(faces) == len(original) == 1
    expected = [value * 3000 / 512 for value in original[0]["box"]]
    box = faces[0]["box"]
    box_side = expected[2] - expected[0]
    assert all(abs(found - want) <= 0.05 * box_side for found, want in zip(box, expected, strict=True)), \
        (box, expected)
    assert iou(box, expected) >= 0.9
    assert faces[0]["score"] >= 0.9


# ---- concurrency ------------------------------------------------------------------------------

def test_two_threads_detecting_at_once_give_the_same_answers(detector, photos):
    batch = [photos[name] for name in PHOTOS]
    expected = detector.detect(batch)
    start = threading.Barrier(2)

    def detect_repeatedly(_):
        start.wait(timeout=30)
        return [detector.detect(batch) for _ in range(3)]

    with ThreadPoolExecutor(2) as pool:
        runs = [answer for answers in pool.map(detect_repeatedly, range(2)) for answer in answers]
    assert all(answer == expected for answer in runs)


# ---- geometry (pure) ----------------------------------------------------------------------------

@pytest.mark.parametrize("size, max_side, expected", [
    ((512, 512), 1024, (512, 512, 1.0)),          # fits: never upscaled
    ((1024, 700), 1024, (1024, 700, 1.0)),        # exactly the limit
    ((3000, 2000), 1024, (1024, 683, 1024 / 3000)),
    ((2000, 3000), 1024, (683, 1024, 1024 / 3000)),
    ((4000, 10), 1000, (1000, 2, 0.25)),
    ((5000, 1), 100, (100, 1, 0.02)),            # a side never rounds to 0
])
def test_working_size(size, max_side, expected):
    width, height, scale = working_size(*size, max_side)
    assert (width, height) == expected[:2]
    assert scale == pytest.approx(expected[2])
    assert max(width, height) <= max_side


@pytest.mark.parametrize("args", [(0, 10, 1024), (10, -1, 1024), (10, 10, 0)])
def test_working_size_rejects_bad_sizes(args):
    with pytest.raises(ValueError):
        working_size(*args)


def test_scale_detections_maps_clips_and_rounds():
    detection = {"label": "face", "score": 0.99, "predictions": [{"label": "x"}],
                 "box": [10.0, 20.0, 341.0, 400.0],
                 "landmarks": {"nose": [100.0, 100.0], "left_eye": [-3.0, 341.5]}}
    scaled = scale_detections([detection], 1 / 3, (1000, 1100))[0]
    assert scaled["box"] == [30.0, 60.0, 1000.0, 1100.0]  # 1023 and 1200 clipped to the image
    assert scaled["landmarks"] == {"nose": [300.0, 300.0], "left_eye": [0.0, 1024.5]}
    assert (scaled["label"], scaled["score"], scaled["predictions"]) == ("face", 0.99, [{"label": "x"}])
    assert detection["box"] == [10.0, 20.0, 341.0, 400.0]  # the input is not changed
    assert scale_detections([{"box": [1, 2, 3, 4]}], 0.3, (100, 100)) == [{"box": [3.33, 6.67, 10.0, 13.33]}]
    assert scale_detections([], 0.5, (10, 10)) == []


@pytest.mark.parametrize("scale", [0, -1.0, float("nan")])
def test_scale_detections_rejects_bad_scales(scale):
    with pytest.raises(ValueError):
        scale_detections([], scale, (10, 10))


def test_working_size_and_scale_detections_round_trip():
    width, height, scale = working_size(3000, 2000, 1024)
    corners = [{"box": [0.0, 0.0, float(width), float(height)]}]
    assert scale_detections(corners, scale, (3000, 2000))[0]["box"] == pytest.approx([0, 0, 3000, 2000], abs=2)
