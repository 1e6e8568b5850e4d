"""Render deploy/nginx.conf.template for a list of web servers, with limits taken from the settings.

    python -m deploy.nginx_conf --upstream 10.0.1.11:5000 --upstream 10.0.1.12:5000 \\
        --listen 0.0.0.0:80 --prefix /var/lib/gateway-nginx > /etc/gateway/nginx.conf

client_max_body_size is MAX_UPLOAD_BYTES and proxy_read_timeout outlasts REQUEST_TIMEOUT, read from
the same environment variables as the app (settings.py), so nginx and the web tier agree.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys

from image_gateway import settings as settings_module

DEPLOY_DIR = os.path.dirname(os.path.abspath(__file__))
TEMPLATE = os.path.join(DEPLOY_DIR, "nginx.conf.template")
SEARCH_PATH = ("/usr/sbin", "/usr/local/sbin", "/usr/local/nginx/sbin", "/opt/homebrew/bin", "/usr/local/bin")


def find_nginx(configured: str | None = None) -> str:
    """The nginx binary: NGINX_BIN, else PATH, else the usual sbin directories."""
    configured = configured or os.environ.get("NGINX_BIN")
    if configured:
        if not os.access(configured, os.X_OK):
            raise RuntimeError(f"NGINX_BIN={configured} is not an executable nginx")
        return configured
    found = shutil.which("nginx") or shutil.which("nginx", path=os.pathsep.join(SEARCH_PATH))
    if not found:
        raise RuntimeError("nginx is not installed (apt-get install nginx, or set NGINX_BIN)")
    return found


def render(upstreams: list[str], listen: str, prefix: str, config: settings_module.Settings | None = None,
           worker_processes: str = "auto", next_upstream_tries: int = 2, user: str | None = None) -> str:
    """The nginx.conf text: round robin over `upstreams` (host:port), every writable path under `prefix`."""
    if not upstreams:
        raise ValueError("nginx needs at least one upstream web server")
    config = config or settings_module.load()
    connect_timeout = 2
    servers = [f"        server {address} max_fails=3 fail_timeout=5s;" for address in upstreams]
    values = {
        "user_line": f"user {user};" if user else "",
        "worker_processes": str(worker_processes),
        "prefix": prefix.rstrip("/"),
        "listen": listen,
        "upstream_servers": "\n".join(servers),
        "client_max_body_size": str(config.max_upload_bytes),
        "task_max_body_size": str(config.max_task_bytes),
        "client_timeout": str(math.ceil(config.client_timeout)),
        "read_timeout": str(math.ceil(config.request_timeout) + 5),
        "connect_timeout": str(connect_timeout),
        # Long enough to try a second server after a connect timeout, too short to retry a request
        # that a server had already been working on for a while.
        "next_upstream_timeout": str(connect_timeout + 1),
        "next_upstream_tries": str(next_upstream_tries),
    }
    with open(TEMPLATE, encoding="utf-8") as template:
        text = template.read()
    return re.sub(r"\{\{(\w+)\}\}", lambda match: values[match.group(1)], text)


def write(path: str, text: str, prefix: str) -> str:
    """Write the config and create the prefix's temp directory (nginx creates only the last level)."""
    os.makedirs(os.path.join(prefix, "temp"), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)
    return path


def command(nginx_bin: str, prefix: str, conf_path: str) -> list[str]:
    """nginx in the foreground, with no path outside `prefix` (-e: not even the startup error log)."""
    return [nginx_bin, "-p", prefix, "-e", os.path.join(prefix, "error.log"), "-c", conf_path,
            "-g", "daemon off;"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deploy.nginx_conf", description=__doc__.splitlines()[0])
    parser.add_argument("--upstream", action="append", required=True, help="a web server host:port (repeat)")
    parser.add_argument("--listen", default="0.0.0.0:80", help="nginx's listen address")
    parser.add_argument("--prefix", default="/var/lib/gateway-nginx", help="directory for pid, logs, temp files")
    parser.add_argument("--worker-processes", default="auto")
    parser.add_argument("--next-upstream-tries", type=int, default=2)
    args = parser.parse_args(argv)
    sys.stdout.write(render(args.upstream, args.listen, args.prefix, worker_processes=args.worker_processes,
                            next_upstream_tries=args.next_upstream_tries))


if __name__ == "__main__":
    main()
