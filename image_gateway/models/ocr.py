"""The built-in OCR models `ocr_det` and `ocr_rec`: the PP-OCRv6 text detector and text recogniser that the
`rapidocr` wheel ships as ONNX files, served on ONNX Runtime (models/onnx_model.py), each with its own queue.

Offline: the two .onnx files are read from the installed package, its `config.yaml` gives their names and
every pre- and postprocessing setting, and the recogniser's character dictionary is inside its .onnx file
(the `character` metadata, as rapidocr reads it). Nothing is downloaded; a missing file is a load error.

rapidocr's own code does the work around the runtime calls, not a copy of it:
- ocr_det: `resize_image_within_bounds` and `apply_vertical_padding` (its pipeline's preparation),
  `DetPreProcess` (sides to multiples of 32, normalisation), `DBPostProcess` (the DB map to boxes: contours,
  box score, unclip, minimum-area rectangles), `map_boxes_to_original`. The boxes come back in reading order
  (models/text_lines.py) as detections: bounding `box` and the four corners as `landmarks`.
- ocr_rec: `TextRecognizer.resize_norm_img` (height 48, width kept, padding) and `CTCLabelDecode` (greedy CTC
  with its dictionary). Each line image answers one detection whose `label` is the text read (none when
  nothing was read), its `box` the whole image.
Both take RGB (the gateway's wire) and feed the models BGR, as rapidocr's image loader does.

Batching: the detector runs images of one input shape together (IMAGES_PER_CALL at most). The recogniser pads
each line to its own width rounded up to WIDTH_STEP (at least the model's 320), and runs the lines of one
padded width together: lines from many requests share a call, and a line reads the same whatever else was in
its batch (rapidocr pads a batch to its widest line, so a line's answer could depend on its neighbours).
"""
from __future__ import annotations

import importlib.util
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from image_gateway.models.errors import ModelError, ModelNotFoundError
from image_gateway.models.spec import OCR_DETECTOR, OCR_MODELS, OCR_RECOGNIZER, OCR_SPECS, TEXT
from image_gateway.models.text_lines import line_width, reading_order, region_detection

RUNTIME = "onnxruntime"
PACKAGE = "rapidocr"
MAX_BATCH = 256
IMAGES_PER_CALL = 2       # detector: bounds one call's memory (a 2000 px page is ~50 MB of input alone)
LINES_PER_CALL = 32       # recogniser
WIDTH_STEP = 64           # recogniser: a line is padded to its width rounded up to this (about one glyph)
INPUT_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))


@dataclass(frozen=True)
class Shipped:
    """What the rapidocr wheel ships for the two models: the files and its config.yaml as a dict."""
    detector: Path
    recognizer: Path
    config: dict


def shipped() -> Shipped:
    """rapidocr's default PP-OCR files, named as its config.yaml names them; ModelError when not installed."""
    found = importlib.util.find_spec(PACKAGE)
    if found is None or not found.origin:
        raise ModelError(f"the OCR models need the {PACKAGE} package (pip install rapidocr==3.10.0)")
    import yaml

    root = Path(found.origin).parent
    config = yaml.safe_load((root / "config.yaml").read_text(encoding="utf-8"))
    det, rec = config["Det"], config["Rec"]
    files = [root / "models" / f"{part['ocr_version']}_{kind}_{part['model_type']}.onnx"
             for kind, part in (("det", det), ("rec", rec))]
    for path in files:
        if not path.is_file():
            raise ModelError(f"{PACKAGE} does not ship {path.name} in its wheel; this gateway never downloads "
                             f"models (install the {PACKAGE} version of requirements.txt)")
    return Shipped(files[0], files[1], config)


def _check_images(batch: Sequence[np.ndarray]) -> list[np.ndarray]:
    """RGB (H, W, 3) uint8 or float32 0..255 -> BGR uint8 (the models' channel order)."""
    images = list(batch)
    if len(images) > MAX_BATCH:
        raise ValueError(f"batch size must be at most {MAX_BATCH}, got {len(images)}")
    converted = []
    for index, image in enumerate(images):
        if not isinstance(image, np.ndarray) or image.dtype not in INPUT_DTYPES:
            raise ValueError(f"image {index} must be a uint8 or float32 numpy array")
        if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image {index} must have shape (H, W, 3), got {image.shape}")
        pixels = image if image.dtype == np.uint8 else np.clip(np.rint(image), 0, 255).astype(np.uint8)
        converted.append(np.ascontiguousarray(pixels[..., ::-1]))
    return converted


def _groups(keys: list, size: int) -> list[list[int]]:
    """Indexes grouped by equal key (first-seen order), at most `size` each."""
    groups: dict = {}
    for index, key in enumerate(keys):
        groups.setdefault(key, []).append(index)
    return [indexes[start:start + size] for indexes in groups.values() for start in range(0, len(indexes), size)]


class TextDetector:
    """spec + detect(images) -> per image its text regions, in reading order, in the pixels of the image given."""

    runtime = RUNTIME

    def __init__(self, runner, config: dict):
        from rapidocr.ch_ppocr_det.utils import DBPostProcess, DetPreProcess

        det, self.settings = config["Det"], config["Global"]
        self.spec = OCR_SPECS[OCR_DETECTOR]
        self.runner, self.input_name = runner, runner.inputs[0].name
        self.preprocess = DetPreProcess(det["limit_side_len"], det["limit_type"], det["mean"], det["std"])
        self.postprocess = DBPostProcess(thresh=det["thresh"], box_thresh=det["box_thresh"],
                                         max_candidates=det["max_candidates"], unclip_ratio=det["unclip_ratio"],
                                         score_mode=det["score_mode"], use_dilation=det["use_dilation"])

    def detect(self, batch: Sequence[np.ndarray]) -> list[list[dict]]:
        images = _check_images(batch)
        prepared = [self._prepare(image) for image in images]
        results: list[list[dict]] = [[] for _ in images]
        shapes = [None if tensor is None else tensor.shape for tensor, _, _ in prepared]
        for indexes in _groups(shapes, IMAGES_PER_CALL):
            if shapes[indexes[0]] is None:
                continue
            maps = self.runner.run(self.input_name, np.concatenate([prepared[i][0] for i in indexes]))[0]
            if len(maps) != len(indexes):
                raise ModelError(f"{OCR_DETECTOR} returned {len(maps)} maps for {len(indexes)} images")
            for position, index in enumerate(indexes):
                results[index] = self._regions(maps[position:position + 1], *prepared[index][1:],
                                               images[index].shape[:2])
        return results

    def _prepare(self, image: np.ndarray):
        """rapidocr's preparation: (the model's input or None, the shape it was made from, what undoes it)."""
        from rapidocr.utils.process_img import apply_vertical_padding, resize_image_within_bounds

        settings = self.settings
        resized, ratio_h, ratio_w = image, 1.0, 1.0
        if settings["use_preprocess_img"]:
            resized, ratio_h, ratio_w = resize_image_within_bounds(image, settings["min_side_len"],
                                                                   settings["max_side_len"])
        record = {"preprocess": {"ratio_h": ratio_h, "ratio_w": ratio_w}}
        if settings["use_vertical_padding"]:
            resized, record = apply_vertical_padding(resized, record, settings["width_height_ratio"],
                                                     settings["min_height"])
        return self.preprocess(resized), resized.shape[:2], record

    def _regions(self, density: np.ndarray, shape: tuple[int, int], record: dict,
                 original: tuple[int, int]) -> list[dict]:
        from rapidocr.utils.process_img import map_boxes_to_original

        boxes, scores = self.postprocess(density, shape)
        if not len(boxes):
            return []
        boxes = map_boxes_to_original(np.asarray(boxes, dtype=np.float32).reshape(-1, 4, 2), record, *original)
        return [region_detection(boxes[i], scores[i], TEXT) for i in reading_order(boxes)]

    def warm_up(self) -> None:
        self.detect([np.full((64, 64, 3), 255, np.uint8)])


class TextRecognizer:
    """spec + detect(line images) -> per image [{"label": text, "score", "box": the whole image}] or []."""

    runtime = RUNTIME

    def __init__(self, runner, config: dict):
        from rapidocr.ch_ppocr_rec.main import TextRecognizer as RapidRecognizer
        from rapidocr.ch_ppocr_rec.utils import CTCLabelDecode

        self.spec = OCR_SPECS[OCR_RECOGNIZER]
        self.shape = [int(side) for side in config["Rec"]["rec_img_shape"]]       # [3, 48, 320]
        if self.shape[1] != self.spec.input_size:
            raise ModelError(f"{PACKAGE}'s recogniser reads lines {self.shape[1]} px high, not "
                             f"{self.spec.input_size}")
        metadata = runner.session.get_modelmeta().custom_metadata_map
        if "character" not in metadata:
            raise ModelError(f"{OCR_RECOGNIZER}: the .onnx file carries no character dictionary")
        self.runner, self.input_name = runner, runner.inputs[0].name
        self.decode = CTCLabelDecode(character=metadata["character"].splitlines())
        self._resize_norm = RapidRecognizer.resize_norm_img          # needs only rec_image_shape of its self
        self._resizer = SimpleNamespace(rec_image_shape=self.shape)

    def padded_width(self, image: np.ndarray) -> int:
        natural = line_width(image.shape[1], image.shape[0], self.shape[1])
        return max(self.shape[2], math.ceil(natural / WIDTH_STEP) * WIDTH_STEP)

    def detect(self, batch: Sequence[np.ndarray]) -> list[list[dict]]:
        images = _check_images(batch)
        widths = [self.padded_width(image) for image in images]
        results: list[list[dict]] = [[] for _ in images]
        for indexes in _groups(widths, LINES_PER_CALL):
            # + 0.5: resize_norm_img takes int(height * ratio) as the padded width; never one short of it
            ratio = (widths[indexes[0]] + 0.5) / self.shape[1]
            tensor = np.stack([self._resize_norm(self._resizer, images[i], ratio) for i in indexes])
            lines, _ = self.decode(self.runner.run(self.input_name, tensor.astype(np.float32))[0])
            if len(lines) != len(indexes):
                raise ModelError(f"{OCR_RECOGNIZER} read {len(lines)} lines for {len(indexes)} images")
            for index, (text, score) in zip(indexes, lines, strict=True):
                height, width = images[index].shape[:2]
                results[index] = [{"label": text, "score": round(float(score), 6),
                                   "box": [0.0, 0.0, float(width), float(height)]}] if text.strip() else []
        return results

    def warm_up(self) -> None:
        self.detect([np.full((self.shape[1], self.shape[2], 3), 255, np.uint8)])


def load_ocr_model(name: str, threads: int = 1) -> TextDetector | TextRecognizer:
    """ocr_det or ocr_rec from the files the rapidocr wheel ships, on `threads` ONNX Runtime threads."""
    if name not in OCR_MODELS:
        raise ModelNotFoundError(f"unknown OCR model {name!r}; OCR models: {', '.join(OCR_MODELS)}")
    from image_gateway.models.onnx_model import OnnxRunner

    files = shipped()
    if name == OCR_DETECTOR:
        return TextDetector(OnnxRunner(files.detector, threads), files.config)
    return TextRecognizer(OnnxRunner(files.recognizer, threads), files.config)
