"""Quota (issue 30): one client limited to 20 requests/s sends 100/s through nginx to 2 web processes.

    python -m bench --quota [--json bench/out/quota.json] [--seconds 20] [--offered 100] [--rate 20]

Starts `deploy.cluster.Cluster` (redis-server, 2 gunicorn web servers, 1 model worker, nginx; CACHE_TTL=0)
with a CLIENTS file of two clients: `heavy` (rate 20/s, burst 20) and `light` (unlimited), both routing
type `scene` to the default model. First `light` alone sends `--light-rate` requests/s for `--seconds`
(its unloaded p50); then `heavy` sends `--offered` requests/s, paced on a schedule (open loop), while
`light` sends as before. Reports `heavy`'s answers per second (each whole second, and the mean), its 429s
(every one must carry Retry-After), and `light`'s p50 unloaded against during.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench import log, system
from deploy.cluster import Cluster
from image_gateway.clients import key_hash

PHOTO = Path(__file__).resolve().parent.parent / "tests" / "data" / "cat.jpg"


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench --quota", description=__doc__.splitlines()[0])
    parser.add_argument("--json", default="bench/out/quota.json", help="where to write the results")
    parser.add_argument("--seconds", type=float, default=20.0, help="seconds of each phase")
    parser.add_argument("--offered", type=float, default=100.0, help="requests/s the limited client sends")
    parser.add_argument("--rate", type=float, default=20.0, help="the limited client's rate (and burst)")
    parser.add_argument("--light-rate", type=float, default=4.0, help="requests/s of the other client")
    parser.add_argument("--web", type=int, default=2)
    parser.add_argument("--threads", type=int, default=32, help="client threads of the limited client")
    return parser.parse_args(argv)


def send(session: requests.Session, url: str, key: str) -> tuple[float, float, int, str | None]:
    """(sent at, seconds, status, Retry-After) of one POST /v1/recognize/scene."""
    started = time.perf_counter()
    try:
        response = session.post(url + "/v1/recognize/scene", files={"image": ("cat.jpg", PHOTO.read_bytes())},
                                headers={"X-API-Key": key}, timeout=30)
        status, retry = response.status_code, response.headers.get("Retry-After")
    except requests.RequestException:
        status, retry = 0, None
    return started, time.perf_counter() - started, status, retry


def paced(url: str, key: str, rate: float, seconds: float, threads: int) -> list[tuple[float, float, int, str | None]]:
    """Requests sent on a schedule (the i-th at start + i / rate), by `threads` threads: an open loop."""
    start, count, shots = time.perf_counter(), int(rate * seconds), []
    local = threading.local()

    def shot(index: int) -> None:
        delay = start + index / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        local.session = getattr(local, "session", None) or requests.Session()
        shots.append(send(local.session, url, key))

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(shot, range(count)))
    return sorted(shots)


def p50_ms(shots) -> float | None:
    times = [seconds for _, seconds, status, _ in shots if status == 200]
    return round(statistics.median(times) * 1000, 1) if times else None


def heavy_summary(shots, seconds: float, start: float) -> dict:
    per_second = [0] * int(seconds)
    for sent, _, status, _ in shots:
        second = int(sent - start)
        if status == 200 and 0 <= second < len(per_second):
            per_second[second] += 1
    limited = [shot for shot in shots if shot[2] == 429]
    return {"sent": len(shots), "answered_200": sum(1 for s in shots if s[2] == 200), "refused_429": len(limited),
            "other": sorted({s[2] for s in shots} - {200, 429}),
            "answered_per_s_mean": round(sum(1 for s in shots if s[2] == 200) / seconds, 2),
            "answered_per_s_steady_mean": round(statistics.mean(per_second[1:]), 2) if len(per_second) > 1 else None,
            "answered_each_second": per_second,
            "all_429_have_retry_after": all(retry and int(retry) >= 1 for *_, retry in limited)}


def run(args: argparse.Namespace) -> dict:
    keys = {"heavy": secrets.token_urlsafe(24), "light": secrets.token_urlsafe(24)}
    run_dir = tempfile.mkdtemp(prefix="gateway-quota-")
    clients = os.path.join(run_dir, "clients.json")
    route = {"scene": {"model": "efficientnet_lite0"}}
    Path(clients).write_text(json.dumps({"clients": [
        {"name": "heavy", "keys_sha256": [key_hash(keys["heavy"])], "routes": route, "rate": args.rate,
         "burst": int(args.rate)},
        {"name": "light", "keys_sha256": [key_hash(keys["light"])], "routes": route}]}))
    log(f"starting the cluster: {args.web} web, 1 worker, nginx (logs in {run_dir})")
    with Cluster(web=args.web, workers=1, env={"CACHE_TTL": "0", "CLIENTS": clients}, run_dir=run_dir) as cluster:
        url = cluster.url
        light_alone = paced(url, keys["light"], args.light_rate, args.seconds, 4)
        log(f"light alone: p50 {p50_ms(light_alone)} ms")
        during: dict = {}
        light = threading.Thread(target=lambda: during.setdefault(
            "light", paced(url, keys["light"], args.light_rate, args.seconds, 4)))
        start = time.perf_counter()
        light.start()
        heavy = paced(url, keys["heavy"], args.offered, args.seconds, args.threads)
        light.join()
    light_p50, loaded_p50 = p50_ms(light_alone), p50_ms(during["light"])
    return {"mode": "quota", "layout": {"web": args.web, "workers": 1, "nginx": 1, "redis": 1, "run_dir": run_dir},
            "seconds": args.seconds, "offered_per_s": args.offered, "rate": args.rate, "burst": int(args.rate),
            "heavy": heavy_summary(heavy, args.seconds, start),
            "light": {"rate_per_s": args.light_rate, "p50_ms_unloaded": light_p50, "p50_ms_during": loaded_p50,
                      "p50_ratio": round(loaded_p50 / light_p50, 3) if light_p50 and loaded_p50 else None,
                      "errors_unloaded": sum(1 for s in light_alone if s[2] != 200),
                      "errors_during": sum(1 for s in during["light"] if s[2] != 200)},
            "machine": system.machine_info()}


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    result = run(args)
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2))
    heavy, light = result["heavy"], result["light"]
    print(f"heavy (rate {args.rate:g}/s, offered {args.offered:g}/s for {args.seconds:g} s): "
          f"{heavy['answered_per_s_mean']}/s answered (after the first second "
          f"{heavy['answered_per_s_steady_mean']}/s), {heavy['refused_429']} x 429 (Retry-After on all: "
          f"{heavy['all_429_have_retry_after']}), other {heavy['other']}")
    print(f"light p50: {light['p50_ms_unloaded']} ms unloaded, {light['p50_ms_during']} ms during "
          f"(x{light['p50_ratio']}); errors {light['errors_unloaded']} / {light['errors_during']}")
    print(f"cpu: {result['machine'].get('cpu_model')}; written to {args.json}")
    return 0
