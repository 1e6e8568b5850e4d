"""simple_request.py against a real gateway serving a repository of toy models: --model, --version, --list-models.

The toy models answer a fixed label per version (toy v1 alpha, toy v2 beta, other v1 gamma), so the
printed label shows which model and version answered. Real redis-server, real worker threads, and the
client run as its own process, as a user runs it.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_many_models import Gateway, publish_version, repository_config

from conftest import DATA, ROOT, wait_for
from redis_server import free_port

SERVED = {("toy", "2"): "READY", ("toy", "1"): "READY", ("other", "2"): "UNAVAILABLE", ("other", "1"): "READY"}


@pytest.fixture
def gateway(redis_url, tmp_path):
    """toy v1 and v2 (toy is the default model), other v1 and a broken other v2."""
    repository = tmp_path / "repository"
    publish_version(repository, "toy", 1, 0)
    publish_version(repository, "toy", 2, 1)
    publish_version(repository, "other", 1, 2)
    (repository / "other" / "2").mkdir()
    (repository / "other" / "2" / "model.keras").write_bytes(b"not a keras archive")
    gateway = Gateway(repository_config(redis_url, repository))
    try:
        served = lambda: {(name, v["version"]): v["state"]  # noqa: E731
                          for name, entry in gateway.models().items() for v in entry["versions"]}
        wait_for(lambda: served() == SERVED, 60, 0.2, message=f"the repository to be served as {SERVED}")
        yield gateway
    finally:
        gateway.stop()


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
