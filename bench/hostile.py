"""Hostile requests (issue 28): each kind of worst-case request, many at once, against `python run_server.py`;
the web process' peak RSS per case against the bound the settings give.

    python -m bench --hostile [--json bench/out/hostile.json] [--clients 64]

Cases, each `--clients` at once (the page's URLs come from a loopback image server this process runs,
which URL_ALLOWLIST=127.0.0.1 admits):
- `largest_png`: POST /predict with an RGBA PNG of MAX_IMAGE_PIXELS;
- `v2_batch`: POST /v2/models/<default>/infer with MAX_BATCH_IMAGES large PNGs;
- `task_urls`: POST /v1/tasks with MAX_TASK_IMAGES URLs (fetched by the feeder, a window at a time).
The task case also observes `--settle` s of feeding. The peak is the web process' VmHWM, reset
before each case (/proc/PID/clear_refs); the bound is its RSS before the case plus DECODE_BUDGET_MP
at 8 bytes per pixel, plus `--clients` request bodies held in memory (the front keeps bodies up to
1 MiB in memory, larger ones in temporary files), plus the model inputs the requests hold while they
wait (a `/v2` request decodes all its images before queueing them: MAX_BATCH_IMAGES x 224 x 224 x 3
bytes each; a task's feeder holds TASK_WINDOW), plus 256 MiB for threads, arenas and answers.
"""
from __future__ import annotations

import argparse
import base64
import http.server
import io
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests
from PIL import Image

from bench import log
from bench.gateway import Gateway
from image_gateway import models
from image_gateway import settings as settings_module

IN_MEMORY_BODY = 1 << 20
MARGIN_MIB = 256


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGBA", (width, height), (90, 140, 200, 128)).save(buffer, "PNG", optimize=True)
    return buffer.getvalue()


def serve_images(image: bytes, delay_s: float = 0.0) -> http.server.ThreadingHTTPServer:
    """A loopback HTTP server that answers every GET with `image` after `delay_s`; `.fetches` counts them."""
    class Images(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            server.fetches += 1
            time.sleep(delay_s)
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(image)))
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Images)
    server.fetches = 0
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def rss_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":"))


def cases(config: settings_module.Settings, image_url: str) -> dict:
    side = int(config.max_image_pixels ** 0.5)
    largest = png(side, side)
    element = base64.b64encode(png(2000, 2000)).decode()
    batch = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [config.max_batch_images],
                         "data": [element] * config.max_batch_images}]}
    urls = {"urls": [f"{image_url}/{i}.png" for i in range(config.max_task_images)]}
    return {                                 # name: (path, request, images one request holds decoded)
        "largest_png": ("/predict", {"files": {"image": ("largest.png", largest)}}, 1),
        "v2_batch": (f"/v2/models/{config.model}/infer", {"data": json.dumps(batch),
                                                          "headers": {"Content-Type": "application/json"}},
                     config.max_batch_images),
        "task_urls": ("/v1/tasks", {"json": urls}, 0),
    }


def run_case(url: str, pid: int, clients: int, path: str, request: dict, bound_extra_mib: float,
             settle_s: float = 0.0) -> dict:
    """`clients` copies of the request at once, then `settle_s` more of the work they started (a task's
    feeding), with the peak RSS over all of it."""
    before = rss_kib(pid, "VmRSS")
    Path(f"/proc/{pid}/clear_refs").write_text("5")          # VmHWM := VmRSS
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        codes = list(pool.map(lambda _: requests.post(url + path, timeout=120, **request).status_code,
                              range(clients)))
    time.sleep(settle_s)
    peak = rss_kib(pid, "VmHWM")
    bound_mib = before / 1024 + bound_extra_mib
    return {"clients": clients, "seconds": round(time.perf_counter() - started, 2),
            "status_codes": {str(code): codes.count(code) for code in sorted(set(codes))},
            "rss_before_mib": round(before / 1024, 1), "peak_rss_mib": round(peak / 1024, 1),
            "bound_mib": round(bound_mib, 1), "within_bound": peak / 1024 <= bound_mib}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench --hostile", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/hostile.json")
    parser.add_argument("--clients", type=int, default=64, help="requests of each kind at once")
    parser.add_argument("--cases", default="largest_png,v2_batch,task_urls", help="comma-separated")
    parser.add_argument("--settle", type=float, default=15.0, help="s of task feeding observed after the POSTs")
    args = parser.parse_args(argv)
    config = settings_module.load({"URL_ALLOWLIST": "127.0.0.1"})
    image_server = serve_images(png(1500, 1500))
    env = {"URL_ALLOWLIST": "127.0.0.1", "DATA_DIR": "", "LOG_LEVEL": "WARNING"}
    gateway = Gateway(Path(args.json).with_suffix(".log"), env).start()
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    spec = models.get_spec(config.model)
    input_mib = spec.input_size ** 2 * 3 / 2**20
    fixed_mib = config.decode_budget_mp * 8 + args.clients * IN_MEMORY_BODY / 2**20 + MARGIN_MIB \
        + config.task_window * input_mib
    results = {"settings": {name: getattr(config, name) for name in ("decode_budget_mp", "max_image_pixels",
                            "max_batch_images", "max_task_images", "max_upload_bytes", "task_window")}}
    try:
        chosen = cases(config, f"http://127.0.0.1:{image_server.server_port}")
        for name in args.cases.split(","):
            path, request, held = chosen[name]
            bound_extra_mib = fixed_mib + args.clients * held * input_mib
            settle_s = args.settle if name == "task_urls" else 0.0
            results[name] = run_case(gateway.url, gateway.process.pid, args.clients, path, request, bound_extra_mib,
                                     settle_s)
            log(f"{name}: {results[name]}")
    finally:
        gateway.stop()
        image_server.shutdown()
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return results
