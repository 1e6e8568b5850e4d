"""Post images to the gateway and print their top predictions.

    python simple_request.py cat.jpg
    python simple_request.py photos/ --url http://127.0.0.1:8080/predict --concurrency 8 --output answers.jsonl
    python simple_request.py cat.jpg --model efficientnet_lite1 [--version 2] [--top-k 3]
    python simple_request.py cat.jpg --type scene --api-key KEY   # POST /v1/recognize/scene: the key's route
    python simple_request.py --list-models --url http://127.0.0.1:8080
    python simple_request.py photos/ --task --output results.jsonl     # one task (POST /v1/tasks), then poll
    python simple_request.py --task-id 3f2a... --output results.jsonl  # resume waiting on a task

Prints `1. Egyptian_cat: 0.8128` lines per image (a progress bar on stderr for more than one image).
A 503 (or 429) answer is retried after its Retry-After seconds (at most --retries times, each wait at most 30 s).

Exit codes: 0 every image was answered; 1 a request or an image failed (an error answer, no
connection, a task CANCELLED or EXPIRED, or --list-models could not list); 2 bad usage; 130 interrupted.
"""
from __future__ import annotations

import argparse
import os
import sys
from contextlib import nullcontext

from image_gateway.client import images, tasks
from image_gateway.client.http import EXIT_FAILED, EXIT_INTERRUPTED


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description="Classify images with the gateway.",
                                     epilog="exit codes: 0 all answered, 1 a failure, 2 bad usage, 130 interrupted")
    parser.add_argument("images", nargs="*", help="image files or folders")
    parser.add_argument("--url", default=os.environ.get("GATEWAY_URL", "http://127.0.0.1:5000/predict"),
                        help="the gateway (http://host:port) or its /predict URL")
    parser.add_argument("--model", help="the served model to ask (default: the server's default model)")
    parser.add_argument("--version", help="pin a version of the model (default: its newest ready version)")
    parser.add_argument("--type", help="a recognition type of your client (its route picks the model; CLIENTS)")
    parser.add_argument("--list-models", action="store_true", help="print the served models and versions, then exit")
    parser.add_argument("--top-k", type=int, help="how many predictions (server default 5)")
    parser.add_argument("--concurrency", type=int, default=1, help="requests in flight at once")
    parser.add_argument("--api-key", default=os.environ.get("API_KEY"), help="X-API-Key, if the server needs one")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    parser.add_argument("--retries", type=int, default=3, help="retries of a 503 answer, after its Retry-After")
    parser.add_argument("--output", help="write every answer to this file as JSON lines")
    parser.add_argument("--json", action="store_true", help="print the raw JSON responses, one per line")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    task_options = parser.add_argument_group("tasks (POST /v1/tasks: the server works through the images)")
    task_options.add_argument("--task", action="store_true", help="send all the images as one task and wait for it")
    task_options.add_argument("--task-id", help="wait for an existing task and fetch its results")
    task_options.add_argument("--models", help="with --task: several models, comma-separated")
    task_options.add_argument("--pipeline", help="with --task: a pipeline instead of a model")
    task_options.add_argument("--poll", type=float, default=0.5, help="with --task: seconds between status polls")
    args = parser.parse_args(argv)
    if args.list_models and (args.images or args.task or args.task_id):
        parser.error("--list-models takes no images" if args.images else "--list-models takes no task")
    if args.task_id and args.images:
        parser.error("--task-id waits for an existing task: give no images")
    if args.type and (args.model or args.version or args.models or args.pipeline):
        parser.error("--type picks the model itself: give no --model, --version, --models or --pipeline")
    if (args.models or args.pipeline) and not args.task:
        parser.error("--models and --pipeline go with --task")
    paths = images.image_paths(args.images)
    if not (args.list_models or args.task_id) and not paths:
        parser.error("no images found" if args.images else "give image files or folders (or --list-models)")
    return args, paths


def main(argv: list[str] | None = None) -> int:
    args, paths = parse_args(argv)
    if args.list_models:
        return images.list_models(args)
    try:
        with open(args.output, "w") if args.output else nullcontext() as output:
            if args.task or args.task_id:
                return tasks.run(args, paths, output)
            return images.predict_all(args, paths, output)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:                 # `| head`: stop quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
