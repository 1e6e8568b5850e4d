"""Single images and folders through POST /predict, `--concurrency` at a time; the model listing."""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote

import requests
from tqdm import tqdm

from image_gateway.client.http import (
    EXIT_FAILED,
    EXIT_OK,
    connection_error,
    format_result,
    gateway_url,
    models_url,
    predict_url,
    show,
    status_and_body,
    with_retries,
)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")


def image_paths(inputs: list[str]) -> list[str]:
    """Files as given, and the images inside any folder given."""
    paths = []
    for item in inputs:
        if os.path.isdir(item):
            paths += sorted(os.path.join(item, name) for name in os.listdir(item)
                            if name.lower().endswith(IMAGE_SUFFIXES))
        else:
            paths.append(item)
    return paths


def classify(session: requests.Session, url: str, path: str, fields: dict[str, str], api_key: str | None,
             timeout_s: float, retries: int = 0) -> tuple[int, dict]:
    """(HTTP status, JSON body) for one image file, sent with the form `fields` (top_k, model, version)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with open(path, "rb") as image:
        def send() -> requests.Response:
            image.seek(0)
            return session.post(url, files={"image": image}, data=fields, headers=headers, timeout=timeout_s)
        return status_and_body(with_retries(send, retries))


def format_models(listing: list[dict]) -> str:
    """One line per version, newest first: `toy (default)  v2  READY        (1 worker)`."""
    rows = []
    for model in listing:
        name = model["name"] + (" (default)" if model.get("default") else "")
        for version in model.get("versions", []):
            workers = version.get("live_workers", 0)
            reason = f"  {version['reason']}" if version.get("reason") else ""
            rows.append((name, f"v{version['version']}", version["state"],
                         f"({workers} worker{'' if workers == 1 else 's'}){reason}"))
    widths = [max((len(row[column]) for row in rows), default=0) for column in range(3)]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row[:3], widths, strict=True)) + "  " + row[3]
                     for row in rows)


def list_models(args: argparse.Namespace) -> int:
    """Print the served models and their versions from GET /v1/models; 1 when it cannot be read."""
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    try:
        status, body = status_and_body(with_retries(
            lambda: requests.get(models_url(args.url), headers=headers, timeout=args.timeout), args.retries))
    except requests.RequestException as exc:
        status, body = 0, connection_error(exc)
    listed = status == 200 and isinstance(body.get("models"), list)
    if args.json:
        print(json.dumps(body))
    elif listed:
        print(format_models(body["models"]) or "no models served")
    else:
        print(format_result(status, body if "error" in body else {"error": {"code": f"HTTP_{status}"}}))
    return EXIT_OK if listed else EXIT_FAILED


def predict_all(args: argparse.Namespace, paths: list[str], output) -> int:
    """Every image through POST /predict, `--concurrency` at a time; the answers printed in order."""
    session = requests.Session()
    fields = {name: str(value) for name, value in
              (("top_k", args.top_k), ("model", args.model), ("version", args.version)) if value}
    url = gateway_url(args.url, f"/v1/recognize/{quote(args.type, safe='')}") if args.type else predict_url(args.url)

    def run(path: str) -> tuple[str, int, dict]:
        try:
            return path, *classify(session, url, path, fields, args.api_key, args.timeout, args.retries)
        except (OSError, requests.RequestException) as exc:
            return path, 0, connection_error(exc)

    failures = 0
    bar = tqdm(total=len(paths), unit="image", file=sys.stderr, disable=len(paths) < 2 or args.no_progress)
    with bar, ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        futures = [pool.submit(run, path) for path in paths]
        for future in futures:
            future.add_done_callback(lambda _: bar.update())
        for future in futures:
            path, status, body = future.result()
            failures += not body.get("success")
            record = {"file": path, "status": status, **body}
            if output:
                output.write(json.dumps(record) + "\n")
            show(json.dumps(record) if args.json else
                 (f"{path}:\n" if len(paths) > 1 else "") + format_result(status, body))
    return EXIT_FAILED if failures else EXIT_OK
