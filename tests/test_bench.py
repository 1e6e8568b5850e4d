"""The benchmark's pieces, cheaply: the closed-loop load generator against a tiny local HTTP server,
the photo pool, and the report (JSON keys, table, PNG) on a fake result. No timing assertions."""
from __future__ import annotations

import hashlib
import io
import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench import loadgen, report
from conftest import ARTIFACTS
from image_gateway import imaging
from image_gateway.models import ModelSpec
from image_gateway.redis_server import free_port

ROOT = Path(__file__).resolve().parent.parent

SPEC_224 = ModelSpec("test", 224, 0.875, "bilinear", ("a",))


class FakeGateway:
    """Speaks the /predict contract; counts requests, connections and the most requests in flight.

    Each request waits (up to hold_s) until `expect_in_flight` requests are in flight, so a closed
    loop of C clients is seen to reach exactly C; every `busy_every`-th request is answered 503.
    """

    def __init__(self, expect_in_flight: int, busy_every: int = 0, hold_s: float = 0.5):
        self.expect_in_flight, self.busy_every, self.hold_s = expect_in_flight, busy_every, hold_s
        self.lock = threading.Condition()
        self.in_flight = self.max_in_flight = self.requests = self.busy_sent = 0
        self.digests: list[str] = []
        self.connections: set[tuple] = set()
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_):
                pass

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status, answer = gateway.handle(body, self.client_address)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def handle(self, body: bytes, client_address) -> tuple[int, dict]:
        with self.lock:
            self.requests += 1
            number = self.requests
            self.digests.append(hashlib.sha256(body).hexdigest())
            self.connections.add(client_address)
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.lock.notify_all()
            self.lock.wait_for(lambda: self.in_flight >= self.expect_in_flight, self.hold_s)
            self.in_flight -= 1
            busy = self.busy_every and number % self.busy_every == 0
            self.busy_sent += bool(busy)
        if busy:
            return 503, {"success": False, "id": None, "error": {"code": "SERVER_BUSY", "message": "full"}}
        return 200, {"success": True, "id": str(number), "model": "fake",
                     "predictions": [{"label": "Egyptian_cat", "class_id": 285, "probability": 0.8}]}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def photos() -> list[bytes]:
    return loadgen.make_photos(0, 12)


def test_closed_loop_keeps_exactly_c_in_flight_and_never_repeats_a_body(photos):
    concurrency = 4
    fake = FakeGateway(expect_in_flight=concurrency, busy_every=5)
    try:
        pool = loadgen.BodyPool.from_jpegs(photos)
        generator = loadgen.LoadGenerator(fake.url, pool, timeout_s=10)
        result = generator.run_level(concurrency, duration_s=1.0, warmup_s=0.2)
    finally:
        fake.close()
    assert fake.max_in_flight == concurrency              # reached C, never more
    assert len(fake.connections) == concurrency           # one keep-alive connection per client
    assert fake.requests == result.sent_total > concurrency
    assert len(set(fake.digests)) == len(fake.digests)    # no body sent twice, even past the pool's end
    assert result.errors_total == ({"503 SERVER_BUSY": fake.busy_sent} if fake.busy_sent else {})
    summary = result.summary()
    assert summary["concurrency"] == concurrency
    assert summary["ok"] + summary["errors"] == len(result.outcomes_in_window)
    assert set(summary["errors_by_code"]) <= {"503 SERVER_BUSY"}
    for key in ("images_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"):
        assert key in summary


def test_one_client_is_strictly_sequential(photos):
    fake = FakeGateway(expect_in_flight=1, hold_s=0.01)
    try:
        result = loadgen.LoadGenerator(fake.url, loadgen.BodyPool.from_jpegs(photos)).run_level(1, 0.3)
    finally:
        fake.close()
    assert fake.max_in_flight == 1
    assert result.sent_total == fake.requests and result.errors_total == {}


def test_refused_connections_are_counted_not_raised(photos):
    generator = loadgen.LoadGenerator(f"http://127.0.0.1:{free_port()}", loadgen.BodyPool.from_jpegs(photos))
    result = generator.run_level(2, duration_s=0.2)
    assert result.sent_total >= 2
    assert list(result.errors_total) == ["0 ConnectionRefusedError"]
    assert result.summary()["ok"] == 0 and result.summary()["p50_ms"] is None


def test_photos_are_distinct_real_jpegs_in_the_size_range(photos):
    assert len({hashlib.sha256(p).digest() for p in photos}) == len(photos)
    for jpeg in photos[:4]:
        with Image.open(io.BytesIO(jpeg)) as image:
            assert image.format == "JPEG"
            assert 300 <= min(image.size) <= 800
        array = imaging.prepare_image(jpeg, SPEC_224, max_pixels=10**8)
        assert array.shape == (224, 224, 3)
    assert loadgen.make_photo(3) == photos[3]              # deterministic for a seed


def test_an_exhausted_pool_still_sends_new_bytes_that_decode(photos):
    pool = loadgen.BodyPool.from_jpegs(photos[:3])
    bodies = [pool.take() for _ in range(20)]
    assert len(set(bodies)) == 20
    assert pool.marked == 17 and pool.taken == 20
    head, tail = len(loadgen.MULTIPART_HEAD), len(loadgen.MULTIPART_TAIL)
    for body in bodies[3:6]:
        assert body.startswith(loadgen.MULTIPART_HEAD) and body.endswith(loadgen.MULTIPART_TAIL)
        array = imaging.prepare_image(body[head:-tail], SPEC_224, max_pixels=10**8)
        assert array.shape == (224, 224, 3)


def test_answers_are_classified_by_the_contract():
    assert loadgen.classify_answer(200, b'{"success": true, "predictions": [{"label": "x"}]}') is None
    assert loadgen.classify_answer(200, b'{"success": false, "error": {"code": "TIMEOUT"}}') == "200 TIMEOUT"
    assert loadgen.classify_answer(504, b'{"success": false, "error": {"code": "TIMEOUT"}}') == "504 TIMEOUT"
    assert loadgen.classify_answer(502, b"<html>bad gateway</html>") == "502 NOT_JSON"


def fake_result() -> dict:
    raw = {1: {"images_per_s": 50.0, "latency_ms_p50": 20.0, "cpu_ms_per_image": 30.0},
           32: {"images_per_s": 160.0, "latency_ms_p50": 200.0, "cpu_ms_per_image": 12.0}}
    levels = {c: {"concurrency": c, "images_per_s": ips, "ok": int(ips * 10), "errors": errors,
                  "errors_by_code": {"503 SERVER_BUSY": errors} if errors else {},
                  "p50_ms": p50, "p90_ms": p50 * 1.5, "p99_ms": p50 * 3, "mean_batch_size": batch,
                  "model_busy_fraction": 0.9, "gateway_cpu_ms_per_image": 13.0}
              for c, ips, p50, errors, batch in [(1, 40.0, 25.0, 0, 1.0), (4, 100.0, 40.0, 0, 3.5),
                                                 (16, 140.0, 110.0, 2, 14.0), (64, 145.0, 420.0, 0, 30.0)]}
    return report.build_result(raw, levels, cpu_per_image_ms={"decode_resize": 2.0, "model": 12.0},
                               settings={"model": "fake", "batch_size": 32, "wire_dtype": "uint8"},
                               machine={"cpu_model": "test cpu", "nproc": 2, "date": "2026-01-01"})


def test_report_has_the_issue_keys_and_draws_a_png(tmp_path):
    result = fake_result()
    for key in ("raw_images_per_s", "raw_batch1_ms", "raw", "gateway_images_per_s", "ratio", "p50_ms_c1",
                "per_concurrency", "p99_ms", "errors", "settings", "machine", "cpu_per_image_ms"):
        assert key in result, key
    assert result["raw_images_per_s"] == 160.0 and result["raw_best_batch_size"] == 32
    assert result["raw_batch1_ms"] == 20.0
    assert result["gateway_images_per_s"] == 145.0 and result["gateway_best_concurrency"] == 64
    assert result["ratio"] == pytest.approx(145 / 160, abs=1e-3)
    assert result["p50_ms_c1"] == 25.0 and result["p99_ms"]["16"] == 330.0
    assert result["errors"] == 2 and result["errors_by_code"] == {"503 SERVER_BUSY": 2}
    assert set(result["per_concurrency"]["4"]) >= {"images_per_s", "p50_ms", "p90_ms", "p99_ms", "errors"}

    json_path, png_path = tmp_path / "out" / "bench.json", tmp_path / "out" / "bench.png"
    report.write_json(result, json_path)
    assert json.loads(json_path.read_text())["ratio"] == result["ratio"]
    report.plot(result, png_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = report.format_table(result)
    assert "145.0" in table and "ratio 0.906" in table
    assert "int8:" not in table
    result.update(int8={"model": "fake_int8", "int8_raw_images_per_s": 300.0, "fp32_raw_images_per_s": 160.0},
                  int8_pipeline_images_per_s=200.0, int8_gateway_images_per_s=150.0, int8_ratio_pipeline=0.75,
                  int8_top1_agreement=0.9, int8_fp32_top1_in_top3=1.0)
    line = next(line for line in report.format_table(result).splitlines() if line.startswith("int8:"))
    assert "raw 300.0 images/s (fp32 160.0" in line and "pipeline 200.0" in line and "gateway 150.0" in line
    assert "ratio_pipeline 0.750" in line and "top-1 agreement 0.900" in line


def test_cpu_accounting_and_metrics_helpers():
    from bench import scrape, system

    np.linalg.svd(np.random.default_rng(0).normal(size=(300, 300)))   # burn a little CPU
    own = system.tree_cpu(os.getpid())
    assert own and sum(own.values()) > 0
    text = ('gateway_batch_size_bucket{le="1.0"} 2.0\ngateway_batch_size_bucket{le="+Inf"} 5.0\n'
            "gateway_batch_size_count 5.0\ngateway_batch_size_sum 40.0\ngateway_inference_seconds_sum 0.5\n")
    parsed = {}
    for line in text.splitlines():
        match = scrape.METRIC_LINE.match(line)
        parsed[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    diagnostics = scrape.level_diagnostics({}, parsed, window_s=1.0)
    assert diagnostics["mean_batch_size"] == 8.0 and diagnostics["batches"] == 5
    assert diagnostics["model_busy_fraction"] == 0.5
    assert diagnostics["batch_size_buckets"] == {"1.0": 2, "+Inf": 5}


def test_command_line_defaults():
    import bench.__main__ as bench_main

    quick = bench_main.parse_args(["--json", "/tmp/x/r.json", "--quick"])
    assert quick.concurrency == [1, 16] and quick.duration == 3.0 and quick.png == "/tmp/x/r.png"
    full = bench_main.parse_args(["--json", "r.json", "--concurrency", "1,4", "--duration", "1"])
    assert full.concurrency == [1, 4] and full.duration == 1.0 and full.pool == 2000


def test_stage_costs_run_the_gateway_code_against_a_real_redis(photos):
    """The per-stage breakdown calls the gateway's own functions and Redis protocol: it must keep up
    with them (it once called a JobQueue method that no longer existed)."""
    from bench import stages
    from image_gateway import models
    from image_gateway import settings as settings_module

    config = settings_module.load({})
    costs, details = stages.stage_costs(photos, models.get_spec(config.model), config)
    for stage in ("decode_resize", "multipart_parse", "serialise", "batch_stack", "postprocess", "redis"):
        assert costs[stage] > 0, stage
    assert details["redis_batch_size"] == config.batch_size
    assert details["redis_batched_server_cpu_ms"] >= 0 and details["message_kib_uint8"] > 140


# ---------------------------------------------------------------- runtime, decode, pipeline, compare
class TinyClassifier:
    """A model that costs nothing: the pipeline's loop and processes without TensorFlow or LiteRT."""

    runtime = "tiny"
    spec = ModelSpec("tiny", 32, 0.875, "bilinear", ("a", "b"))

    def predict(self, batch: np.ndarray) -> np.ndarray:
        assert batch.shape[1:] == (32, 32, 3) and batch.dtype == np.uint8
        return np.full((len(batch), 2), 0.5, np.float32)


def tiny_loader(config) -> tuple[TinyClassifier, str]:
    return TinyClassifier(), "tiny"


def test_ratio_pipeline_decode_and_runtime_in_the_result():
    pipeline = {"images_per_s": 160.0, "best_batch_size": 1, "processes": 2, "other_processes_cores": 0.0}
    result = report.build_result(fake_result()["raw"], fake_result()["per_concurrency"], raw_batch1_ms=20.0,
                                 runtime="litert", decode_ms=3.0, pipeline=pipeline)
    assert result["runtime"] == "litert" and result["decode_ms"] == 3.0
    assert result["pipeline_images_per_s"] == 160.0 and result["pipeline_best_batch_size"] == 1
    assert result["ratio_pipeline"] == pytest.approx(145 / 160, abs=1e-3)
    assert result["p50_c1_over_model_and_decode_ms"] == 2.0            # 25 - 20 - 3
    for key in ("raw_images_per_s", "raw_batch1_ms", "p50_ms_c1", "errors", "ratio", "per_concurrency"):
        assert key in result, key
    table = report.format_table(result)
    assert "ratio_pipeline 0.906" in table and "runtime:   litert" in table and "decode_ms 3.00" in table
    assert report.build_result({}, {})["ratio_pipeline"] is None       # nothing measured: no ratio


def test_compare_runtime_is_side_by_side_in_json_table_and_plot(tmp_path):
    main = report.build_result(fake_result()["raw"], fake_result()["per_concurrency"], runtime="litert",
                               pipeline={"images_per_s": 160.0, "best_batch_size": 1, "processes": 2})
    slower = {c: {**level, "images_per_s": level["images_per_s"] / 2} for c, level in main["per_concurrency"].items()}
    compare = report.build_result({1: {"images_per_s": 60.0, "latency_ms_p50": 30.0}}, slower, runtime="tensorflow",
                                  pipeline={"images_per_s": 64.0, "best_batch_size": 8, "processes": 2})
    main["compare"], main["compare_speedup"] = compare, report.speedups(main, compare)
    assert set(compare) >= set(main) - {"compare", "compare_speedup"}  # the same keys
    speedup = main["compare_speedup"]
    assert speedup["runtimes"] == ["litert", "tensorflow"] and speedup["gateway_images_per_s"] == 2.0
    assert speedup["images_per_s_by_concurrency"]["16"] == 2.0 and speedup["pipeline_images_per_s"] == 2.5
    table = report.format_table(main)
    assert "--compare-runtime: the same with the gateway on tensorflow" in table
    assert "side by side" in table and "72.5" in table                  # tensorflow's best level, 145 / 2
    report.plot(main, tmp_path / "both.png")
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class FakeModelsEndpoint:
    """GET /v1/models answering `document` (404 when None)."""

    def __init__(self, document: dict | None):
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_):
                pass

            def do_GET(self):
                data = json.dumps(document).encode()
                self.send_response(200 if document is not None and self.path == "/v1/models" else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def test_the_runtime_is_read_from_v1_models_newest_ready_version_of_the_default_model():
    from bench import pipeline

    document = {"models": [
        {"name": "other", "default": False, "versions": [{"version": "1", "state": "READY", "runtime": "jax"}]},
        {"name": "efficientnet_lite0", "default": True, "versions": [
            {"version": "3", "state": "LOADING", "live_workers": 0},
            {"version": "10", "state": "READY", "live_workers": 1, "runtime": "litert"},
            {"version": "2", "state": "READY", "live_workers": 1, "runtime": "tensorflow"}]}]}
    endpoints = [FakeModelsEndpoint(document), FakeModelsEndpoint(None)]
    try:
        assert pipeline.gateway_runtime(endpoints[0].url) == "litert"          # 10 is newer than 3 and 2
        document["models"][1]["default"] = False
        assert pipeline.gateway_runtime(endpoints[0].url, "other") == "jax"   # no default: by name
        assert pipeline.gateway_runtime(endpoints[1].url) is None             # no /v1/models
    finally:
        [endpoint.close() for endpoint in endpoints]


def test_decode_ms_and_the_pipeline_loop_on_a_tiny_model(photos):
    from bench import pipeline

    decode = pipeline.decode_ms(photos[:4], TinyClassifier.spec, max_pixels=10**8)
    assert decode["images"] == 4 and 0 < decode["decode_ms"] <= decode["p90_ms"]
    row = pipeline.pipeline_loop(TinyClassifier(), photos, batch_size=3, seconds=0.2, max_pixels=10**8)
    assert row["images"] % 3 == 0 and row["images"] >= 3 and row["wall_s"] >= 0.2
    assert row["images_per_s"] == pytest.approx(row["images"] / row["wall_s"])


def test_the_pipeline_runs_one_process_per_core_together(photos):
    from bench import pipeline

    result = pipeline.measure_pipeline(photos[:6], [1, 2], seconds=0.3, processes_count=2, loader=tiny_loader)
    assert result["processes"] == 2 and result["runtime"] == "tiny" and set(result["rows"]) == {"1", "2"}
    best = max(result["rows"].values(), key=lambda row: row["images_per_s"])
    assert result["images_per_s"] == best["images_per_s"] > 0
    assert result["best_batch_size"] in (1, 2) and all(row["images"] > 0 for row in result["rows"].values())


def test_the_raw_baseline_loads_the_runtime_the_worker_would(monkeypatch):
    from bench import raw_model
    from image_gateway import models
    from image_gateway import settings as settings_module
    from image_gateway.models import litert

    calls = []
    monkeypatch.setattr(models, "load_model", lambda name, **kw: calls.append(("keras", name)) or object())
    def fake_litert(name, cache_dir, threads, **kw):
        calls.append(("litert", cache_dir, threads, kw["fallback"]))
        return TinyClassifier()

    monkeypatch.setattr(litert, "load_litert_model", fake_litert)
    classifier, runtime = raw_model.load_for_runtime(settings_module.load({"LITERT_CACHE_DIR": "/c"}), 2)
    assert runtime == "tiny" and calls[-1] == ("litert", "/c", 2, True)     # auto: LiteRT, falling back
    assert raw_model.load_for_runtime(settings_module.load({"RUNTIME": "litert"}), 0)[1] == "tiny"
    assert calls[-1][2:] == (1, False)                                     # litert: no fallback, >= 1 thread
    assert raw_model.load_for_runtime(settings_module.load({"RUNTIME": "tensorflow"}))[1] == "tensorflow"
    assert calls[-1][0] == "keras"


def test_compare_runtime_flag():
    import bench.__main__ as bench_main

    args = bench_main.parse_args(["--json", "r.json", "--compare-runtime", "tensorflow"])
    assert args.compare_runtime == "tensorflow"
    assert bench_main.parse_args(["--json", "r.json"]).compare_runtime is None
    with pytest.raises(SystemExit):
        bench_main.parse_args(["--json", "r.json", "--url", "http://x", "--compare-runtime", "tensorflow"])


def test_imaging_bench_turbo_path_is_pillows_pixels():
    from bench import imaging_bench

    for width, height, draft in [(1023, 700, 256), (1024, 511, 256), (600, 400, 256), (4000, 3000, 256)]:
        buffer = io.BytesIO()
        Image.new("RGB", (width, height)).save(buffer, "JPEG")
        image = Image.open(buffer)
        image.draft(None, (draft, draft))
        denominator = imaging_bench.draft_denominator(width, height, draft)
        assert image.size == (-(-width // denominator), -(-height // denominator))   # Pillow's own choice
    functions = imaging_bench.path_functions(SPEC_224)
    jpeg = loadgen.make_photo(5)
    assert np.array_equal(functions["turbo"](jpeg), functions["pillow"](jpeg))


def test_the_gpu_run_script_end_to_end_on_the_cpu(tmp_path):
    """`python -m bench.gpu` has no GPU to run on in CI; `--runtime tensorflow --quick` takes its every
    step here (raw child, gunicorn without nginx, a model worker, loader processes) and must answer."""
    out = tmp_path / "gpu.json"
    done = subprocess.run([sys.executable, "-m", "bench.gpu", "--runtime", "tensorflow", "--quick",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["runtime"] == "tensorflow" and result["backend"] == "tensorflow"
    assert result["raw_images_per_s"] > 0 and result["end_to_end_images_per_s"] > 0
    assert result["errors"] == 0 and result["levels"][0]["concurrency"] == 4
    assert result["ratio"] == round(result["end_to_end_images_per_s"] / result["raw_images_per_s"], 3)


def test_hostile_mode_reports_peak_rss_against_the_settings_bound(tmp_path):
    """`python -m bench --hostile`, short: two largest-PNG requests and two URL tasks against a real
    `python run_server.py`; the JSON has the peak and the bound per case."""
    out = tmp_path / "hostile.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--hostile", "--json", str(out), "--clients", "2",
                           "--cases", "largest_png,task_urls", "--settle", "1"], cwd=ROOT, capture_output=True,
                          text=True, timeout=600,
                          env={**os.environ, "LITERT_CACHE_DIR": str(ARTIFACTS / "litert-cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["settings"]["decode_budget_mp"] > 0
    for case in ("largest_png", "task_urls"):
        row = result[case]
        assert row["clients"] == 2 and row["peak_rss_mib"] >= row["rss_before_mib"] > 0
        assert row["within_bound"] and row["peak_rss_mib"] <= row["bound_mib"]
    assert set(result["task_urls"]["status_codes"]) == {"202"}


def test_serving_mode_splits_the_cpu_and_compares_with_a_baseline(tmp_path):
    """`python -m bench --serving --baseline HEAD`, one short window each: web, worker and Redis CPU apart,
    decode and model taken out by the gateway's own counters, the baseline measured from a git worktree."""
    out = tmp_path / "serving.json"
    done = subprocess.run([sys.executable, "-m", "bench", "--serving", "--json", str(out), "--baseline", "HEAD",
                           "--rounds", "1", "--duration", "2", "--concurrency", "4", "--photos", "200"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "LITERT_CACHE_DIR": str(ARTIFACTS / "litert-cache")})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    for side in ("current", "baseline"):
        row = result[side]
        assert row["errors"] == 0 and row["images_per_s"] > 0
        assert set(row["cpu_ms_per_image"]) == {"web", "worker", "redis"}
        assert all(value > 0 for value in row["cpu_ms_per_image"].values())
        stages = row["stages_ms_per_image"]
        assert row["server_cpu_ms_per_image"] == pytest.approx(
            stages["web_serving"] + stages["worker_serving"] + stages["redis"], abs=0.01)
    current, baseline = result["current"], result["baseline"]
    assert 0 < current["decode_cpu_ms"] < current["cpu_ms_per_image"]["web"]
    # HEAD has the step counters: the baseline's figure takes its own decode and model out, not this checkout's
    assert (baseline["decode_cpu_ms"], baseline["model_cpu_ms"]) == (
        baseline["rounds"][0]["decode_cpu_ms"], baseline["rounds"][0]["model_cpu_ms"])
    assert 0 < current["model_cpu_ms"] < current["cpu_ms_per_image"]["worker"]
    assert result["server_cpu_ratio"] == round(current["server_cpu_ms_per_image"]
                                               / baseline["server_cpu_ms_per_image"], 3)
    worktrees = subprocess.run(["git", "worktree", "list"], cwd=ROOT, capture_output=True, text=True).stdout
    assert "bench-baseline-" not in worktrees            # the baseline's worktree is gone
