"""INT8 built-ins: names and specs, the generated calibration set, a real full-integer conversion with its
accuracy check, the cache a worker reads without TensorFlow, a check that fails the conversion, and the
int8 models served through the gateway (listed with "precision": "int8", selectable, the default).

Real everything: TensorFlow's converter, LiteRT, redis-server, the web tier over HTTP and a ModelHost.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import requests
from test_many_models import gateways  # noqa: F401  (the fixture: a web tier and a ModelHost in this process)

from conftest import DATA, make_config, wait_for
from image_gateway.models import calibration, get_spec, known_models, litert, quantize
from image_gateway.models.lite_variants import INT8_VARIANTS, LITE_VARIANTS

ROOT = Path(__file__).resolve().parent.parent
LITE0, LITE0_INT8 = "efficientnet_lite0", "efficientnet_lite0_int8"


# ------------------------------------------------------------------------------------------ names, specs
def test_each_lite_size_has_an_int8_name_with_the_fp32_geometry():
    assert sorted(INT8_VARIANTS) == [f"{name}_int8" for name in sorted(LITE_VARIANTS)]
    assert set(INT8_VARIANTS) <= set(known_models())
    for name, fp32_name in INT8_VARIANTS.items():
        spec, fp32 = get_spec(name), get_spec(fp32_name)
        assert (spec.name, spec.precision, fp32.precision) == (name, "int8", "fp32")
        assert (spec.input_size, spec.crop_fraction, spec.resample, spec.labels) == \
               (fp32.input_size, fp32.crop_fraction, fp32.resample, fp32.labels)


def test_the_int8_cache_key_differs_from_fp32_and_names_the_calibration():
    digest = litert.file_digest(litert.source_weights_path(LITE0))
    fp32_key, int8_key = litert.cache_key(get_spec(LITE0), digest), litert.cache_key(get_spec(LITE0_INT8), digest)
    assert fp32_key != int8_key
    assert quantize.KEY_FIELDS["calibration"] == calibration.RECIPE
    assert quantize.KEY_FIELDS["calibration_count"] >= 200


# ---------------------------------------------------------------------------------- calibration set
def test_the_calibration_set_is_generated_deterministic_and_not_the_check_photos():
    spec = get_spec(LITE0_INT8)
    assert calibration.DEFAULT_COUNT >= 200
    first, again = calibration.generated_photo(7), calibration.generated_photo(7)
    assert np.array_equal(np.asarray(first), np.asarray(again))
    assert not np.array_equal(np.asarray(first), np.asarray(calibration.generated_photo(8)))
    batch = quantize.calibration_batch(spec)
    views = quantize.check_views(spec).astype(np.float32)
    assert batch.shape == (calibration.DEFAULT_COUNT, 224, 224, 3) and views.shape == (60, 224, 224, 3)
    assert len({image.tobytes() for image in batch}) == len(batch)          # all distinct
    nearest = min(float(np.abs(views - image.astype(np.float32)).mean(axis=(1, 2, 3)).min()) for image in batch)
    assert nearest > 10, f"a calibration image is within {nearest:.1f} grey levels of a check photo"
    assert 40 < batch.mean() < 215 and batch.std() > 30                    # photo-like, not flat


def test_the_check_set_is_six_real_photos_in_ten_views_each():
    assert sorted(path.name for path in quantize.CHECK_DIR.glob("*.jpg")) == sorted(quantize.CHECK_PHOTOS)
    for name in ("cat.jpg", "coffee.jpg"):
        assert (quantize.CHECK_DIR / name).read_bytes() == (DATA / name).read_bytes()
    views = quantize.check_views(get_spec("efficientnet_lite1_int8"))
    assert views.shape == (60, 240, 240, 3) and views.dtype == np.uint8
    assert np.array_equal(views[5], views[0][:, ::-1])                      # view 5 mirrors the centre crop


def test_compare_counts_agreement_and_top3_containment():
    fp32 = np.eye(4, dtype=np.float32)[[0, 1, 2, 3] * 5]                     # 20 views, 2 "photos"
    int8 = fp32.copy()
    int8[0] = [0.1, 0.5, 0.4, 0.0]         # fp32's class 0 only third: disagrees, still in the top 3
    int8[1] = [0.0, 0.1, 0.1, 0.8]         # class 1 at 0.1 ties for second: disagrees, in the top 3
    agreement = quantize.compare(fp32, int8)
    assert (agreement.photos, agreement.views) == (2, 20)
    assert (agreement.top1_agreement, agreement.fp32_top1_in_top3) == (0.9, 1.0)
    assert agreement.centre_top1_agreement == 0.5                            # views 0 and 10
    assert agreement.passed
    assert not quantize.compare(fp32, np.roll(fp32, 1, axis=1)).passed


# ------------------------------------------------------------------------------ conversion and cache
@pytest.fixture(scope="module")
def converted(tmp_path_factory) -> tuple[Path, litert.LiteRTClassifier]:
    """lite0 converted to int8 in a fresh cache, exactly as a worker that misses the cache does it."""
    cache_dir = tmp_path_factory.mktemp("int8-cache")
    return cache_dir, litert.load_litert_model(LITE0_INT8, str(cache_dir), fallback=True)


def test_conversion_writes_a_full_integer_file_and_its_passing_figures(converted):
    cache_dir, lite = converted
    assert isinstance(lite, litert.LiteRTClassifier) and lite.spec.precision == "int8" and lite.logits
    files = sorted(path.name for path in cache_dir.iterdir())
    stem = Path(lite.model_path).name.removesuffix(".tflite")
    assert files == [f"{stem}.check.json", f"{stem}.tflite"]
    figures = json.loads((cache_dir / f"{stem}.check.json").read_text())
    assert figures == lite.accuracy and figures["passed"]
    assert (figures["photos"], figures["views"], figures["calibration_images"]) == (6, 60, 256)
    assert figures["top1_agreement"] >= quantize.MIN_TOP1_AGREEMENT
    assert figures["fp32_top1_in_top3"] >= quantize.MIN_TOP3_CONTAINMENT

    from ai_edge_litert.interpreter import Interpreter
    interpreter = Interpreter(model_path=lite.model_path)
    dtypes = [np.dtype(detail["dtype"]).name for detail in interpreter.get_tensor_details()]
    assert dtypes.count("float32") == 2 and dtypes.count("int8") > 100      # only the float input and output
    assert np.dtype(interpreter.get_input_details()[0]["dtype"]) == np.float32
    assert np.dtype(interpreter.get_output_details()[0]["dtype"]) == np.float32


def test_int8_answers_agree_with_fp32_on_the_check_photos(converted, classifier):
    lite = converted[1]
    views = quantize.check_views(lite.spec)
    probabilities = lite.predict(views)
    assert probabilities.dtype == np.float32 and probabilities.shape == (60, 1000)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)
    again = quantize.compare(classifier.predict(views), probabilities)
    assert again.top1_agreement == lite.accuracy["top1_agreement"]
    assert again.fp32_top1_in_top3 == lite.accuracy["fp32_top1_in_top3"]
    coffee = quantize.CHECK_PHOTOS.index("coffee.jpg") * quantize.VIEWS_PER_PHOTO
    assert lite.spec.labels[int(probabilities[coffee].argmax())] == "espresso"


CHILD = """
import json, sys
from image_gateway.models.litert import load_litert_model
model = load_litert_model("efficientnet_lite0_int8", cache_dir=sys.argv[1])
heavy = sorted(m for m in ("tensorflow", "keras", "jax") if m in sys.modules)
print(json.dumps({"heavy": heavy, "accuracy": model.accuracy, "path": model.model_path}))
"""


def test_a_worker_loads_the_cached_int8_file_without_tensorflow(converted):
    cache_dir, lite = converted
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    result = subprocess.run([sys.executable, "-c", CHILD, str(cache_dir)], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer == {"heavy": [], "accuracy": lite.accuracy, "path": lite.model_path}


# ------------------------------------------------------------------------------ a check that fails
@pytest.fixture(scope="module")
def rejected(classifier) -> quantize.Agreement:
    """A really broken conversion: the network fed raw 0..255 pixels (no normalisation), checked."""
    spec = get_spec(LITE0_INT8)
    content = quantize.convert_int8(classifier, lambda pixels: pixels, count=16)
    broken = litert.LiteRTClassifier(spec, model_content=content, logits=True)
    return quantize.check(spec, classifier.predict, broken.predict)


def test_the_check_rejects_a_broken_conversion(rejected):
    assert not rejected.passed
    assert rejected.top1_agreement < quantize.MIN_TOP1_AGREEMENT
    assert "top-1 agreement with fp32" in rejected.summary() and "60 views of 6 real photos" in rejected.summary()


def write_rejection(cache_dir: Path, agreement: quantize.Agreement) -> Path:
    """What a conversion that failed its check leaves in the cache: the figures, no model file."""
    spec = get_spec(LITE0_INT8)
    key = litert.cache_key(spec, litert.file_digest(litert.source_weights_path(LITE0)))
    path = Path(litert.check_path(litert.cache_path(str(cache_dir), spec, key)))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(agreement.as_dict()))
    return path


def test_a_failed_check_fails_the_load_with_its_figures_and_never_falls_back(tmp_path, rejected):
    write_rejection(tmp_path, rejected)
    with pytest.raises(quantize.QuantizationError) as error:
        litert.load_litert_model(LITE0_INT8, str(tmp_path), fallback=True)
    assert f"top-1 agreement with fp32 {rejected.top1_agreement:.3f}" in str(error.value)
    assert not list(tmp_path.glob("*.tflite"))


# ------------------------------------------------------------------------------------- the gateway
COFFEE, CAT = (DATA / "coffee.jpg").read_bytes(), (DATA / "cat.jpg").read_bytes()


def test_int8_is_served_listed_and_selected_by_name(redis_url, gateways):  # noqa: F811
    served = gateways(make_config(redis_url, models=LITE0_INT8, catalog_refresh_s=0.2))
    listing = served.models()
    assert listing[LITE0]["default"] and not listing[LITE0_INT8]["default"]
    assert listing[LITE0]["versions"][0]["precision"] == "fp32"
    version = listing[LITE0_INT8]["versions"][0]
    assert (version["precision"], version["state"], version["runtime"], version["format"]) == \
           ("int8", "READY", "litert", "builtin")
    assert listing[LITE0_INT8]["input_size"] == 224
    fp32, int8 = served.post("/predict", COFFEE).json(), served.post(f"/v1/models/{LITE0_INT8}/predict", COFFEE).json()
    assert (fp32["model"], int8["model"], int8["version"]) == (LITE0, LITE0_INT8, "1")
    assert int8["predictions"][0]["label"] == fp32["predictions"][0]["label"] == "espresso"
    assert abs(int8["predictions"][0]["probability"] - fp32["predictions"][0]["probability"]) < 0.1
    by_field = served.post("/predict", CAT, model=LITE0_INT8).json()
    assert by_field["model"] == LITE0_INT8 and by_field["success"]


def test_model_int8_makes_it_the_default(redis_url, gateways):  # noqa: F811
    served = gateways(make_config(redis_url, model=LITE0_INT8))
    assert served.models()[LITE0_INT8]["default"] and set(served.models()) == {LITE0_INT8}
    answer = served.post("/predict", COFFEE).json()
    assert answer["model"] == LITE0_INT8 and answer["predictions"][0]["label"] == "espresso"
    ready = requests.get(served.url + "/readyz", timeout=10).json()
    assert ready["ready"] and ready["model"] == LITE0_INT8


def test_a_failed_check_is_unavailable_with_the_figures(redis_url, gateways, tmp_path, rejected):  # noqa: F811
    write_rejection(tmp_path, rejected)
    served = gateways(make_config(redis_url, model=LITE0_INT8, litert_cache_dir=str(tmp_path), catalog_refresh_s=0.2))
    unavailable = lambda: [v for v in served.models()[LITE0_INT8]["versions"] if v["state"] == "UNAVAILABLE"]  # noqa: E731
    version = wait_for(unavailable, 30, message="the int8 version to be UNAVAILABLE")[0]
    assert version["precision"] == "int8" and "QuantizationError" in version["reason"]
    assert f"top-1 agreement with fp32 {rejected.top1_agreement:.3f}" in version["reason"]
    refused = served.post(f"/v1/models/{LITE0_INT8}/predict", COFFEE)
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "MODEL_UNAVAILABLE"


def test_bench_int8_measures_both_models_from_the_cache(converted):
    from bench import int8 as bench_int8
    cache_dir, lite = converted
    figures = bench_int8.model_figures(LITE0, str(cache_dir), 0.3)
    assert figures["int8_top1_agreement"] == lite.accuracy["top1_agreement"]
    assert figures["int8_fp32_top1_in_top3"] == lite.accuracy["fp32_top1_in_top3"]
    assert figures["fp32_ms_per_image_1_thread"] > 0 and figures["int8_ms_per_image_1_thread"] > 0
    assert figures["int8_raw_images_per_s"] > 0 and figures["model"] == LITE0_INT8
    assert bench_int8.int8_name(LITE0) == LITE0_INT8 and bench_int8.int8_name("resnet50") is None


def test_bench_int8_pipeline_decodes_and_runs_the_int8_model(converted):
    """int8_pipeline_images_per_s: the pipeline's processes load the int8 twin from the cache (LiteRT)."""
    from bench import loadgen, pipeline
    cache_dir, _ = converted
    photos = loadgen.make_photos(0, 4)
    result = pipeline.measure_pipeline(photos, [1, 2], 0.3, processes_count=1,
                                       env={"MODEL": LITE0_INT8, "LITERT_CACHE_DIR": str(cache_dir)})
    assert result["runtime"] == "litert" and result["images_per_s"] > 0
    assert set(result["rows"]) == {"1", "2"} and all(row["images"] >= 1 for row in result["rows"].values())
