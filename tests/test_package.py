"""`pip install .` gives one import package, image_gateway, and a working server outside the checkout.

The wheel is built from the checkout (no build isolation: setuptools from the test environment), then
installed with `pip install --no-deps --target` into a folder outside the checkout: the dependencies are
the test environment's, the gateway's code, page and pipelines file are only the wheel's.
"""
from __future__ import annotations

import subprocess
import sys
import zipfile

import numpy as np
import pytest
import requests

from conftest import ARTIFACTS, DATA, ROOT, wait_for
from image_gateway import imaging, processes
from image_gateway.redis_server import free_port

PHOTOS = ("cat.jpg", "coffee.jpg", "rocket.jpg")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=300)
    [path] = out.glob("image_gateway-*.whl")
    return zipfile.ZipFile(path)


def test_the_wheel_installs_one_import_name_and_its_data(wheel):
    names = wheel.namelist()
    [top_level] = [name for name in names if name.endswith(".dist-info/top_level.txt")]
    assert wheel.read(top_level).decode().split() == ["image_gateway"]
    roots = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert roots == {"image_gateway"}                       # no bench, deploy, fuzz, tests, settings.py ...
    for data in ("image_gateway/pipelines.json", "image_gateway/web/static/index.html",
                 "image_gateway/web/static/app.js", "image_gateway/models/imagenet_classes.txt"):
        assert data in names
    [entry_points] = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    scripts = wheel.read(entry_points).decode()
    for script in ("gateway-server = image_gateway.embedded:main", "gateway-worker = image_gateway.worker.main:main",
                   "gateway-client = image_gateway.client.cli:main"):
        assert script in scripts


def test_installed_gateway_server_serves_outside_the_checkout(wheel, classifier, tmp_path):
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site),
                    wheel.filename], check=True, capture_output=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "PYTHONPATH": str(site), "PORT": str(port),
           "DATA_DIR": "", "LITERT_CACHE_DIR": str(ARTIFACTS / "litert-cache"), "WORKER_THREADS": "1",
           "LOG_FORMAT": "text"}
    server = processes.start([sys.executable, str(site / "bin" / "gateway-server")], env=env, cwd=elsewhere,
                             log_path=tmp_path / "server.log", die_with_parent=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: server.poll() is not None or processes.http_get(f"{url}/readyz", 2)[0] == 200, 180, 0.5,
                 "the installed gateway to be ready")
        assert server.poll() is None, (tmp_path / "server.log").read_text()
        imported_from = subprocess.run([sys.executable, "-c", "import image_gateway; print(image_gateway.__file__)"],
                                       env=env, cwd=elsewhere, capture_output=True, text=True).stdout
        assert imported_from.startswith(str(site))
        page = requests.get(url + "/", timeout=10)
        assert page.status_code == 200 and "<html" in page.text.lower()
        pipelines = {p["name"] for p in requests.get(url + "/v1/pipelines", timeout=10).json()["pipelines"]}
        assert {"face_crops", "all_classifiers"} <= pipelines
        for photo in PHOTOS:
            data = (DATA / photo).read_bytes()
            answer = requests.post(url + "/predict", files={"image": data}, timeout=30).json()
            reference = classifier.predict(imaging.prepare_image(data, classifier.spec, max_pixels=10**8)[None])[0]
            got = [(p["class_id"], p["probability"]) for p in answer["predictions"]]
            assert len(got) == 5 and got[0][0] == int(np.argmax(reference))
            for class_id, probability in got:
                assert probability == pytest.approx(float(reference[class_id]), abs=0.01)
            assert [p for _, p in got] == sorted((p for _, p in got), reverse=True)
    finally:
        processes.stop(server, 30)
