"""Post images to the gateway and print their top predictions.

    python simple_request.py cat.jpg
    python simple_request.py photos/ --url http://127.0.0.1:8080/predict --concurrency 8 --json

Prints `1. Egyptian_cat: 0.8128` lines per image; exits 1 if any request failed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import requests

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


def predict_url(url: str) -> str:
    """Accept the gateway's base URL as well as its /predict URL."""
    return url if urlsplit(url).path.rstrip("/").endswith("/predict") else url.rstrip("/") + "/predict"


def classify(session: requests.Session, url: str, path: str, top_k: int | None, api_key: str | None,
             timeout_s: float) -> tuple[int, dict]:
    """(HTTP status, JSON body) for one image file."""
    headers = {"X-API-Key": api_key} if api_key else {}
    data = {"top_k": str(top_k)} if top_k else {}
    with open(path, "rb") as image:
        response = session.post(url, files={"image": image}, data=data, headers=headers, timeout=timeout_s)
    try:
        return response.status_code, response.json()
    except ValueError:
        error = {"code": "BAD_RESPONSE", "message": response.text[:200]}
        return response.status_code, {"success": False, "error": error}


def format_result(status: int, body: dict) -> str:
    if body.get("success"):
        lines = [f"{i}. {p['label']}: {p['probability']:.4f}" for i, p in enumerate(body["predictions"], 1)]
    else:
        error = body.get("error", {})
        lines = [f"error {status} {error.get('code')}: {error.get('message')}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Classify images with the gateway.")
    parser.add_argument("images", nargs="+", help="image files or folders")
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:5000/predict"),
                        help="the gateway (http://host:port) or its /predict URL")
    parser.add_argument("--top-k", type=int, help="how many predictions (server default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="X-API-Key, if the server needs one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--json", action="store_true", help="print the raw JSON responses, one per line")
    args = parser.parse_args(argv)
    paths = image_paths(args.images)
    if not paths:
        parser.error("no images found")
    session = requests.Session()

    def run(path: str):
        try:
            return path, *classify(session, predict_url(args.url), path, args.top_k, args.api_key, args.timeout)
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
