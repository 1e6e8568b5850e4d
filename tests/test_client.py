"""simple_request.py against a real gateway serving a repository of toy models: --model, --version, --list-models.

The toy models answer a fixed label per version (toy v1 alpha, toy v2 beta, other v1 gamma), so the
printed label shows which model and version answered. Real redis-server, real worker threads, and the
client run as its own process, as a user runs it.
"""
from __future__ import annotations

import http.server
import importlib
import json
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_many_models import MIXED, mixed_repository_gateway

from conftest import DATA, ROOT
from image_gateway.redis_server import free_port

SERVED = MIXED


@pytest.fixture
def gateway(redis_url, tmp_path):
    with mixed_repository_gateway(redis_url, tmp_path / "repository") as gateway:
        yield gateway


def client(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "simple_request.py"), *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def top_label(run: subprocess.CompletedProcess) -> str:
    """The label of the `1. label: 0.9647` line; the run must have succeeded."""
    assert run.returncode == 0, (run.stdout, run.stderr)
    first = run.stdout.splitlines()[0]
    assert first.startswith("1. "), run.stdout
    return first[3:].split(": ")[0]


def test_model_and_version_flags_are_sent_as_form_fields(gateway):
    cat, coffee = str(DATA / "cat.jpg"), str(DATA / "coffee.jpg")
    predict = f"{gateway.url}/predict"
    assert top_label(client(cat, "--url", predict)) == "beta"                         # the default: toy v2
    assert top_label(client(cat, "--url", predict, "--model", "other")) == "gamma"
    assert top_label(client(cat, "--url", gateway.url, "--model", "toy", "--version", "1")) == "alpha"
    assert top_label(client(cat, "--url", predict, "--version", "1")) == "alpha"      # the default model's v1

    several = client(cat, coffee, "--url", predict, "--model", "toy", "--version", "1")   # the usual layout
    assert several.returncode == 0, several.stderr
    lines = several.stdout.splitlines()
    assert [lines[0], lines[4]] == [f"{cat}:", f"{coffee}:"] and len(lines) == 8, lines
    assert all(line.startswith(f"{rank}. ") for rank, line in zip((1, 2, 3, 1, 2, 3), lines[1:4] + lines[5:8],
                                                                    strict=True)), lines
    assert lines[1].startswith("1. alpha: 0.") and lines[5].startswith("1. alpha: 0.")

    as_json = client(cat, coffee, "--url", predict, "--model", "other", "--json")
    assert as_json.returncode == 0, as_json.stderr
    answers = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [(a["file"], a["status"], a["model"], a["version"]) for a in answers] == [
        (cat, 200, "other", "1"), (coffee, 200, "other", "1")]


def test_an_unknown_model_or_version_fails_with_its_code(gateway):
    cat = str(DATA / "cat.jpg")
    unknown = client(cat, "--url", gateway.url, "--model", "nope")
    assert unknown.returncode == 1
    assert unknown.stdout.startswith("error 404 MODEL_NOT_FOUND:") and "other, toy" in unknown.stdout
    missing = client(cat, "--url", gateway.url, "--model", "toy", "--version", "7")
    assert missing.returncode == 1 and missing.stdout.startswith("error 404 MODEL_VERSION_NOT_FOUND:")
    broken = client(cat, "--url", gateway.url, "--model", "other", "--version", "2")
    assert broken.returncode == 1 and broken.stdout.startswith("error 503 MODEL_UNAVAILABLE:")


def test_list_models_prints_one_line_per_version(gateway):
    listed = client("--list-models", "--url", gateway.url)
    assert listed.returncode == 0, listed.stderr
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [row[:5] for row in rows[1:]] == [
        ["other", "v1", "READY", "(1", "worker)"],
        ["toy", "(default)", "v2", "READY", "(1"],
        ["toy", "(default)", "v1", "READY", "(1"]], listed.stdout
    assert rows[0][:5] == ["other", "v2", "UNAVAILABLE", "(0", "workers)"] and "model.keras" in listed.stdout
    columns = {line.index(" v") for line in listed.stdout.splitlines()}
    assert len(columns) == 1, listed.stdout                                 # the versions line up

    # Any of the gateway's predict URLs leads to the same listing; --json prints the raw answer.
    for url in (f"{gateway.url}/predict", f"{gateway.url}/v1/models/toy/versions/1/predict"):
        assert client("--list-models", "--url", url).stdout == listed.stdout
    as_json = client("--list-models", "--url", gateway.url, "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["models"] == list(
        dict(sorted(gateway.models().items())).values())


def test_list_models_fails_without_a_gateway_and_takes_no_images():
    down = client("--list-models", "--url", f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 1 and down.stdout.startswith("error 0 CONNECTION_ERROR:"), down.stdout
    mixed = client("--list-models", str(DATA / "cat.jpg"))
    assert mixed.returncode == 2 and "--list-models takes no images" in mixed.stderr
    nothing = client()
    assert nothing.returncode == 2 and "--list-models" in nothing.stderr


# ---------------------------------------------------------------- progress, output, retries, tasks
def test_progress_bar_output_file_and_top_k(gateway, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.jpg", "coffee.jpg"):
        shutil.copy(DATA / name, folder / name)
    answers = tmp_path / "answers.jsonl"
    run = client(str(folder), "--url", gateway.url, "--top-k", "2", "--output", str(answers))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [f"{folder / 'cat.jpg'}:", *run.stdout.splitlines()[1:3],
                                       f"{folder / 'coffee.jpg'}:", *run.stdout.splitlines()[4:6]]
    assert "2/2" in run.stderr and "100%" in run.stderr                       # the bar, on stderr
    records = [json.loads(line) for line in answers.read_text().splitlines()]
    assert [(Path(r["file"]).name, r["status"], r["model"], len(r["predictions"])) for r in records] == [
        ("cat.jpg", 200, "toy", 2), ("coffee.jpg", 200, "toy", 2)]
    one = client(str(folder / "cat.jpg"), "--url", gateway.url)
    assert one.returncode == 0 and "%|" not in one.stderr                      # one image: no bar


def test_a_task_uploads_a_folder_then_results_are_paged_into_the_output(gateway, tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    names = ("astronaut.jpg", "cat.jpg", "coffee.jpg")
    for name in names:
        shutil.copy(DATA / name, folder / name)
    results = tmp_path / "results.jsonl"
    run = client(str(folder), "--url", f"{gateway.url}/predict", "--task", "--models", "toy,other", "--top-k", "1",
                 "--output", str(results))
    assert run.returncode == 0, (run.stdout, run.stderr)
    task_id = re.search(r"task (\w+): 3 images", run.stderr).group(1)
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert [(r["task_id"], r["index"], r["filename"], r["model"], r["success"]) for r in records] == [
        (task_id, index, name, model, True) for index, name in enumerate(names) for model in ("other", "toy")]
    assert {r["model"]: r["predictions"][0]["label"] for r in records} == {"toy": "beta", "other": "gamma"}
    assert "6/6" in run.stderr and "DONE" in run.stderr
    assert run.stdout.startswith("astronaut.jpg [other]:\n1. gamma: ")

    again = tmp_path / "again.jsonl"                                         # resume: the same results
    resumed = client("--task-id", task_id, "--url", gateway.url, "--output", str(again), "--no-progress")
    assert resumed.returncode == 0 and again.read_text() == results.read_text() and resumed.stderr == ""
    missing = client("--task-id", "nope", "--url", gateway.url)
    assert missing.returncode == 1 and missing.stdout.startswith("error 404 TASK_NOT_FOUND:")
    usage = client(str(folder), "--url", gateway.url, "--pipeline", "toys")
    assert usage.returncode == 2 and "--models and --pipeline go with --task" in usage.stderr


class FlakyGateway(http.server.BaseHTTPRequestHandler):
    """Answers 503 with Retry-After: 1 until `busy` runs out, then a prediction; records what it was sent."""

    busy = 0
    seen: list[tuple[float, str | None]] = []

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        FlakyGateway.seen.append((time.monotonic(), self.headers.get("X-API-Key")))
        if self.path.startswith("/slow"):     # the client adds /predict
            time.sleep(2)
        if FlakyGateway.busy > 0:
            FlakyGateway.busy -= 1
            status, body = 503, {"success": False, "id": None, "error": {"code": "SERVER_BUSY", "message": "full"}}
        else:
            status, body = 200, {"success": True, "id": "1", "model": "m", "version": "1",
                                 "predictions": [{"label": "Egyptian_cat", "class_id": 285, "probability": 0.8128}]}
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        if status == 503:
            self.send_header("Retry-After", "1")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def flaky_gateway():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FlakyGateway)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    FlakyGateway.seen = []
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(5)


def test_503_is_retried_after_retry_after_and_the_key_and_timeout_are_used(flaky_gateway):
    cat = str(DATA / "cat.jpg")
    FlakyGateway.busy = 2
    patient = client(cat, "--url", flaky_gateway, "--api-key", "sesame", "--retries", "3")
    assert patient.returncode == 0 and patient.stdout == "1. Egyptian_cat: 0.8128\n", patient.stdout
    times = [at for at, _ in FlakyGateway.seen]
    assert len(times) == 3 and all(later - earlier >= 0.95 for earlier, later in zip(times, times[1:], strict=False))
    assert {key for _, key in FlakyGateway.seen} == {"sesame"}

    FlakyGateway.busy, FlakyGateway.seen = 5, []
    impatient = client(cat, "--url", flaky_gateway, "--retries", "1")
    assert impatient.returncode == 1 and impatient.stdout.startswith("error 503 SERVER_BUSY: full")
    assert len(FlakyGateway.seen) == 2                                        # bounded: one retry
    FlakyGateway.busy = 0
    slow = client(cat, "--url", flaky_gateway + "/slow", "--timeout", "0.5", "--retries", "0")
    assert slow.returncode == 1 and slow.stdout.startswith("error 0 CONNECTION_ERROR:")


def test_console_scripts_name_functions_that_return_exit_codes():
    import tomllib
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"gateway-server": "image_gateway.embedded:main",
                       "gateway-worker": "image_gateway.worker.main:main",
                       "gateway-client": "image_gateway.client.cli:main"}
    for target in scripts.values():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function))
    from image_gateway.client import cli
    assert cli.main(["--list-models", "--url", f"http://127.0.0.1:{free_port()}"]) == 1
