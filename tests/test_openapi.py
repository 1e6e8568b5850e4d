"""GET /openapi.json against a live gateway: schemathesis calls every operation the document describes.

schemathesis runs as its command line does (`schemathesis run URL/openapi.json --checks ...`), with the
four checks the issue names and nothing else: not_a_server_error, status_code_conformance,
content_type_conformance, response_schema_conformance. No schemathesis config file (the run's folder
has none), its default phases (examples, coverage, fuzzing, stateful), MAX_EXAMPLES generated cases per
operation and a fixed seed, so anyone who runs those checks against a gateway gets the same result.
(Its pytest plugin's lazy fixture loader, which a live server needs, fails under pytest 9.)

The gateway serves toy repository models and a fan-out pipeline over real HTTP and Redis; the schema's
examples carry a small valid PNG, so answers with predictions are checked too, not only errors.
The run's JSON report is kept as tests/artifacts/schemathesis.json.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from test_many_models import Gateway, publish_version, repository_config

from conftest import ARTIFACTS, wait_for

CHECKS = ("not_a_server_error", "status_code_conformance", "content_type_conformance", "response_schema_conformance")
MAX_EXAMPLES = 25
SEED = 20261125


@pytest.fixture(scope="module")
def live_gateway(redis_server, tmp_path_factory):
    """toy v1 and v2 (the default), other v1, a fan-out pipeline over both; one gateway for the module."""
    folder = tmp_path_factory.mktemp("openapi")
    repository = folder / "repository"
    for name, version, winner in (("toy", 1, 0), ("toy", 2, 1), ("other", 1, 2)):
        publish_version(repository, name, version, winner)
    pipelines = folder / "pipelines.json"
    pipelines.write_text(json.dumps({"pipelines": [{"name": "toys", "type": "fan_out", "models": ["toy", "other"]}]}))
    # URL_INPUT=0: generated `url` values must never make the gateway look up or fetch a host.
    config = repository_config(redis_server.url, repository, pipelines=str(pipelines), key_prefix="openapi",
                               url_input=0)
    gateway = Gateway(config)
    try:
        wait_for(lambda: requests.get(gateway.url + "/v2/health/ready", timeout=5).status_code == 200, 60, 0.2,
                 message="toy and other to be ready")
        yield gateway
    finally:
        gateway.stop()


def schemathesis_command() -> list[str]:
    found = Path(sys.executable).with_name("schemathesis")
    return [str(found)] if found.exists() else [shutil.which("schemathesis") or "schemathesis"]


def test_schemathesis_finds_no_failure(live_gateway, tmp_path):
    report = tmp_path / "report.json"
    command = [*schemathesis_command(), "run", live_gateway.url + "/openapi.json", "--checks", ",".join(CHECKS),
               "--max-examples", str(MAX_EXAMPLES), "--seed", str(SEED), "--report", "json",
               "--report-json-path", str(report), "--no-color"]
    run = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "schemathesis.log").write_text(run.stdout + run.stderr)
    assert report.exists(), run.stdout[-3000:] + run.stderr[-3000:]
    shutil.copy(report, ARTIFACTS / "schemathesis.json")
    summary = json.loads(report.read_text())
    cases = summary["test_cases"]
    print(f"\nschemathesis: {cases['generated']} cases over {summary['operations']['tested']} operations, "
          f"{cases['with_failures']} with failures")
    assert run.returncode == 0 and summary["failures"] == [] and summary["errors"] == [], run.stdout[-6000:]
    assert cases["with_failures"] == 0 and cases["errored"] == 0
    documented = {f"{method} {path}" for method, path in operations(live_gateway)} - {"GET /openapi.json"}
    assert summary["operations"]["tested"] == summary["operations"]["total"] == len(documented)   # (the schema's
    assert set(summary["valid_rates"]) == documented                                   # own URL is not tested)
    assert all(phase["status"] == "success" for phase in summary["phases"].values()), summary["phases"]


def operations(gateway) -> dict[tuple[str, str], dict]:
    document = requests.get(gateway.url + "/openapi.json", timeout=10).json()
    return {(method.upper(), path): operation for path, item in document["paths"].items()
            for method, operation in item.items()}


def test_every_route_is_documented_with_its_errors(live_gateway):
    document = requests.get(live_gateway.url + "/openapi.json", timeout=10).json()
    assert document["openapi"].startswith("3.1")
    documented = operations(live_gateway)
    assert not [key for key, operation in documented.items() if operation["tags"] == ["undocumented"]]
    predict = documented[("POST", "/predict")]
    assert set(predict["requestBody"]["content"]) == {"multipart/form-data", "application/json"}
    codes = {status: response["content"]["application/json"]["schema"]["properties"]["error"]["properties"]["code"]
             ["enum"] for status, response in predict["responses"].items() if status != "200"}
    assert {"IMAGE_UNREADABLE", "MISSING_IMAGE"} <= set(codes["400"]) and set(codes["504"]) == {"TIMEOUT"}
    assert "Retry-After" in predict["responses"]["503"]["headers"]
    assert all("X-Request-ID" in response["headers"] for response in predict["responses"].values())
    assert {"/v2/models/{name}/infer", "/v1/pipelines/{name}/predict", "/docs"} <= set(document["paths"])


def test_what_schemathesis_and_probing_found_stays_fixed(live_gateway):
    """Found while checking the contract: each answered 500 INTERNAL_ERROR before its fix."""
    from image_gateway.web.openapi_operations import example_png
    url = live_gateway.url
    huge = requests.post(url + "/predict", data=f'{{"image": "{example_png()}", "top_k": 1e400}}', timeout=10,
                         headers={"Content-Type": "application/json"})
    assert huge.status_code == 400 and huge.json()["error"]["code"] == "INVALID_PARAMETER"
    deep = b"[" * 5000 + b"]" * 5000
    for path in ("/predict", "/v1/pipelines/toys/predict"):
        nested = requests.post(url + path, data=deep, headers={"Content-Type": "application/json"}, timeout=10)
        assert nested.status_code == 400 and nested.json()["error"]["code"] == "INVALID_JSON", path
    infer = requests.post(url + "/v2/models/toy/infer", data=deep, timeout=10)
    assert infer.status_code == 400 and set(infer.json()) == {"error"}
    slash = requests.get(url + "/v1/models/a%2Fb", timeout=10)        # documented: the app's NOT_FOUND
    assert slash.status_code == 404 and slash.json()["error"]["code"] == "NOT_FOUND"
