"""Post images to the gateway and print their top predictions.

    python simple_request.py cat.jpg
    python simple_request.py photos/ --url http://127.0.0.1:8080/predict --concurrency 8 --json
    python simple_request.py cat.jpg --model efficientnet_lite1 [--version 2]
    python simple_request.py --list-models --url http://127.0.0.1:8080

Prints `1. Egyptian_cat: 0.8128` lines per image; exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import requests

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
# The predict endpoints the gateway's base URL can be given as: /predict and /v1/models/<name>[/versions/<v>]/predict
PREDICT_PATH = re.compile(r"(/v1/models/[^/]+(/versions/[^/]+)?)?/predict/?$")


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


def predict_url(url: str) -> str:
    """Accept the gateway's base URL as well as its /predict URL."""
    return url if urlsplit(url).path.rstrip("/").endswith("/predict") else url.rstrip("/") + "/predict"


def models_url(url: str) -> str:
    """The gateway's GET /v1/models, from its base URL or any of its predict URLs."""
    parts = urlsplit(url)
    base = PREDICT_PATH.sub("", parts.path).rstrip("/")
    return urlunsplit((parts.scheme, parts.netloc, base + "/v1/models", "", ""))


def classify(session: requests.Session, url: str, path: str, fields: dict[str, str], api_key: str | None,
             timeout_s: float) -> tuple[int, dict]:
    """(HTTP status, JSON body) for one image file, sent with the form `fields` (top_k, model, version)."""
    headers = {"X-API-Key": api_key} if api_key else {}
    with open(path, "rb") as image:
        response = session.post(url, files={"image": image}, data=fields, headers=headers, timeout=timeout_s)
    return status_and_body(response)


def status_and_body(response: requests.Response) -> tuple[int, dict]:
    try:
        return response.status_code, response.json()
    except ValueError:
        error = {"code": "BAD_RESPONSE", "message": response.text[:200]}
        return response.status_code, {"success": False, "error": error}


def format_result(status: int, body: dict) -> str:
    if body.get("success") and "detections" in body:      # a detector's answer: scored boxes
        lines = [f"{i}. {d['label']}: {d['score']:.4f} {d['box']}" for i, d in enumerate(body["detections"], 1)]
    elif body.get("success"):
        lines = [f"{i}. {p['label']}: {p['probability']:.4f}" for i, p in enumerate(body["predictions"], 1)]
    else:
        error = body.get("error", {})
        lines = [f"error {status} {error.get('code')}: {error.get('message')}"]
    return "\n".join(lines)


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
        status, body = status_and_body(requests.get(models_url(args.url), headers=headers, timeout=args.timeout))
    except requests.RequestException as exc:
        status, body = 0, {"success": False, "error": {"code": "CONNECTION_ERROR", "message": str(exc)}}
    listed = status == 200 and isinstance(body.get("models"), list)
    if args.json:
        print(json.dumps(body))
    elif listed:
        print(format_models(body["models"]) or "no models served")
    else:
        print(format_result(status, body if "error" in body else {"error": {"code": f"HTTP_{status}"}}))
    return 0 if listed else 1


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Classify images with the gateway.")
    parser.add_argument("images", nargs="*", help="image files or folders")
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:5000/predict"),
                        help="the gateway (http://host:port) or its /predict URL")
    parser.add_argument("--model", help="the served model to ask (default: the server's default model)")
    parser.add_argument("--version", help="pin a version of the model (default: its newest ready version)")
    parser.add_argument("--list-models", action="store_true", help="print the served models and versions, then exit")
    parser.add_argument("--top-k", type=int, help="how many predictions (server default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="X-API-Key, if the server needs one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the raw JSON responses, one per line")
    args = parser.parse_args(argv)
    if args.list_models and args.images:
        parser.error("--list-models takes no images")
    paths = [] if args.list_models else image_paths(args.images)
    if not args.list_models and not paths:
        parser.error("no images found" if args.images else "give image files or folders (or --list-models)")
    return args, paths


def main(argv: list[str] | None = None) -> int:
    args, paths = parse_args(argv)
    if args.list_models:
        return list_models(args)
    session = requests.Session()
    fields = {name: str(value) for name, value in
              (("top_k", args.top_k), ("model", args.model), ("version", args.version)) if value}

    def run(path: str):
        try:
            return path, *classify(session, predict_url(args.url), path, fields, args.api_key, args.timeout)
        except (OSError, requests.RequestException) as exc:
            return path, 0, {"success": False, "error": {"code": "CONNECTION_ERROR", "message": str(exc)}}

    failures = 0
    with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        for path, status, body in pool.map(run, paths):
            failures += not body.get("success")
            if args.json:
                print(json.dumps({"file": path, "status": status, **body}))
            else:
                if len(paths) > 1:
                    print(f"{path}:")
                print(format_result(status, body))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
