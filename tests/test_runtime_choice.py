"""RUNTIME=auto for the built-in classifiers: the ONNX twin of the LiteRT file gives the same answers, auto
measures both runtimes once and then reads its decision, RUNTIME=onnxruntime serves through the gateway, and
a twin that disagrees (a wrong normalisation) or does not load is rejected while the worker still starts.

Real everything: tf2onnx (in its child process), ONNX Runtime, LiteRT, redis-server, the web tier over HTTP.
"""
from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_many_models import gateways  # noqa: F401  (the fixture: a web tier and a ModelHost in this process)

from conftest import ARTIFACTS, DATA, make_config
from image_gateway import imaging
from image_gateway.models import get_spec, litert, onnx_builtin, quantize, runtime_choice
from image_gateway.models.spec import DEFAULT_MODEL

GOLDEN = Path(__file__).resolve().parent / "data" / "golden_efficientnet_lite0.npz"
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def shared_twin() -> tuple[Path, Path]:
    """The default model's LiteRT file and its ONNX twin in the tests' shared cache (made once)."""
    cache = ARTIFACTS / "litert-cache"
    lite = litert.load_litert_model(DEFAULT_MODEL, str(cache))
    return Path(lite.model_path), Path(onnx_builtin.ensure_onnx(lite.model_path))


@pytest.fixture
def cache(tmp_path, shared_twin) -> Path:
    """A cache of this test's own holding both files (and no decision yet)."""
    for path in shared_twin:
        shutil.copyfile(path, tmp_path / path.name)
    return tmp_path


@pytest.fixture
def messages():
    """What the runtime choice logs (the gateway's loggers do not propagate once configured)."""
    records: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("gateway.runtime")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def options(cache: Path, runtime: str = "auto") -> runtime_choice.Options:
    return runtime_choice.Options(runtime=runtime, cache_dir=str(cache), threads=1, callers=2, batch_size=8)


def decisions(cache: Path) -> list[Path]:
    return sorted(cache.glob("*.runtime-*.json"))


def test_the_onnx_twin_gives_litert_and_keras_answers(shared_twin):
    spec = get_spec(DEFAULT_MODEL)
    lite = litert.LiteRTClassifier(spec, model_path=str(shared_twin[0]))
    onnx = onnx_builtin.OnnxClassifier(spec, str(shared_twin[1]))
    with np.load(GOLDEN) as golden:
        pixels, keras = golden["pixels"], quantize.softmax(golden["logits"])
    images = np.concatenate([pixels, runtime_choice.check_images(spec)])
    mine, reference = onnx.predict(images), lite.predict(images)
    assert mine.shape == (17, 1000) and mine.dtype == np.float32
    assert np.abs(mine - reference).max() <= TOLERANCE and np.abs(mine[:5] - keras).max() <= TOLERANCE
    for row, theirs in zip(mine, reference, strict=True):
        assert list(np.argsort(-row)[:5]) == list(np.argsort(-theirs)[:5])
    assert runtime_choice.verify(spec, lite.predict, onnx.predict) == ""
    assert onnx.predict(pixels[:1].astype(np.float32)).shape == (1, 1000)   # float32 too, and batch 1


def test_auto_measures_once_then_reads_its_decision(cache, messages):
    first = runtime_choice.load_builtin(DEFAULT_MODEL, options(cache))
    [decision_file] = decisions(cache)
    saved = first.choice
    assert first.runtime == saved["runtime"] in ("litert", "onnxruntime") and saved["rejected"] == {}
    for runtime in ("litert", "onnxruntime"):
        row = saved["measured"][runtime]
        assert row["batch1_ms"] > 0 and row["batch_ms_per_image"] > 0 and row["rounds"] >= 1
        assert (row["batch_size"], row["callers"]) == (8, 2)
    assert any("verified and measured in" in line and "cached decision" not in line for line in messages)
    assert "onnxruntime" in messages[-1] and "litert" in messages[-1]      # both runtimes' ms/image in the log
    written = decision_file.stat().st_mtime_ns

    messages.clear()
    second = runtime_choice.load_builtin(DEFAULT_MODEL, options(cache))
    assert second.runtime == first.runtime and second.choice == saved
    assert decisions(cache) == [decision_file] and decision_file.stat().st_mtime_ns == written
    assert any(f"[cached decision {decision_file.name}]" in line for line in messages)

    other = runtime_choice.load_builtin(DEFAULT_MODEL, runtime_choice.Options(cache_dir=str(cache), callers=1))
    assert len(decisions(cache)) == 2 and other.choice["measured"]["litert"]["callers"] == 1   # its own key


def wrong_normalisation(path: Path) -> None:
    """Rewrite the twin so it scales the pixels to 0..1 before its own normalisation: a real model that runs,
    on the wrong input range (what a twin made without the gateway's normalisation would do)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(path))
    pixels = model.graph.input[0].name
    for node in model.graph.node:
        node.input[:] = [f"{pixels}_scaled" if name == pixels else name for name in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array(255, np.float32), "two_five_five"))
    model.graph.node.insert(0, helper.make_node("Div", [pixels, "two_five_five"], [f"{pixels}_scaled"]))
    onnx.save(model, str(path))


def test_a_twin_that_disagrees_is_rejected(cache, messages):
    [twin] = cache.glob("*.onnx")
    wrong_normalisation(twin)
    chosen = runtime_choice.load_builtin(DEFAULT_MODEL, options(cache))
    assert chosen.runtime == "litert" and set(chosen.choice["measured"]) == {"litert"}
    why = chosen.choice["rejected"]["onnxruntime"]
    assert "top-5" in why and "LiteRT's" in why
    assert any(line.startswith(f"{DEFAULT_MODEL}: onnxruntime rejected: its top-5") for line in messages)
    assert "onnxruntime rejected" in chosen.choice["reason"]


def test_a_corrupt_twin_falls_back_to_litert_whatever_runtime_asks(cache, messages):
    [twin] = cache.glob("*.onnx")
    twin.write_bytes(twin.read_bytes()[: twin.stat().st_size // 2])
    for runtime in ("auto", "onnxruntime"):
        assert runtime_choice.load_builtin(DEFAULT_MODEL, options(cache, runtime)).runtime == "litert"
    assert len([line for line in messages if "ONNX Runtime is not available" in line]) == 2
    assert "not a readable ONNX model" in messages[-1] and not decisions(cache)
    assert runtime_choice.load_builtin(DEFAULT_MODEL, options(cache, "litert")).runtime == "litert"


def test_a_failed_conversion_is_remembered(tmp_path, shared_twin, messages):
    lite_file = tmp_path / shared_twin[0].name
    shutil.copyfile(shared_twin[0], lite_file)
    Path(onnx_builtin.error_path(str(lite_file))).write_text("tf2onnx failed (exit 1): an unsupported op\n")
    chosen = runtime_choice.load_builtin(DEFAULT_MODEL, options(tmp_path))
    assert chosen.runtime == "litert" and not list(tmp_path.glob("*.onnx"))
    assert "an earlier ONNX conversion failed: tf2onnx failed (exit 1): an unsupported op" in messages[-1]


def test_forced_onnxruntime_serves_the_builtin_through_the_gateway(redis_url, gateways, cache):  # noqa: F811
    served = gateways(make_config(redis_url, runtime="onnxruntime", litert_cache_dir=str(cache)))
    [version] = served.models()[DEFAULT_MODEL]["versions"]
    assert (version["state"], version["runtime"], version["format"]) == ("READY", "onnxruntime", "builtin")
    coffee = (DATA / "coffee.jpg").read_bytes()
    answer = served.post("/predict", coffee).json()
    spec = get_spec(DEFAULT_MODEL)
    pixels = imaging.prepare_image(coffee, spec, max_pixels=make_config(redis_url).max_image_pixels)
    lite = litert.LiteRTClassifier(spec, model_path=str(next(cache.glob("*.tflite"))))
    reference = lite.predict(pixels[np.newaxis])[0]
    assert answer["success"] and [p["class_id"] for p in answer["predictions"]] == list(np.argsort(-reference)[:5])
    for prediction in answer["predictions"]:
        assert abs(prediction["probability"] - reference[prediction["class_id"]]) <= TOLERANCE
    assert not decisions(cache)     # forced: nothing measured


def test_bench_runtimes_measures_both_runtimes_interleaved(cache):
    from bench import ocr_rate, runtimes
    from image_gateway import settings as settings_module

    assert runtimes.interleaved(3) == [("litert", "onnxruntime"), ("onnxruntime", "litert"), ("litert", "onnxruntime")]
    config = settings_module.load({"LITERT_CACHE_DIR": str(cache), "WORKER_THREADS": "2", "BATCH_SIZE": "4"})
    raw = runtimes.raw_ab(config, 2, 0.1)
    for runtime in runtimes.RUNTIMES:
        assert len(raw[runtime]["images_per_s"]) == 2 and raw[runtime]["images_per_s_median"] > 0
        assert raw[runtime]["batch1_ms_median"] > 0
    assert (raw["batch_size"], raw["callers"]) == (4, 2) and raw["onnx_over_litert_images_per_s"] > 0
    flat = runtimes.summary({"raw": raw, "runtime_auto_chose": "litert", "ocr_requests_per_s": 0.5})
    assert flat["raw_onnxruntime_images_per_s"] == raw["onnxruntime"]["images_per_s_median"]
    assert flat["runtime_auto_chose"] == "litert" and flat["ocr_requests_per_s"] == 0.5
    assert runtimes._message('{"level": "INFO", "message": "x on litert (RUNTIME=auto): y"}').endswith(": y")
    body = ocr_rate.multipart(ocr_rate.page_png())
    assert b"\x89PNG" in body and body.endswith(f"--{ocr_rate.BOUNDARY}--\r\n".encode())
