"""gunicorn settings for the web tier (no model in these processes).

    REDIS_URL=redis://10.0.0.5:6379/0 gunicorn -c deploy/gunicorn.conf.py run_server:app

Reads the gateway's own settings (HOST, PORT, REQUEST_TIMEOUT ... see settings.py) plus:
    GUNICORN_WORKERS   processes (default 2; WEB_CONCURRENCY is honoured too)
    GUNICORN_THREADS   threads per process (default 32): each waiting /predict holds one while it BLPOPs
    PROMETHEUS_MULTIPROC_DIR  where the processes share their metrics; a fresh temporary directory
                       when unset. It must be set before run_server/metrics are imported, which is
                       why this file sets os.environ (gunicorn reads it before loading the app).
Any other gunicorn option can be given on the command line or in GUNICORN_CMD_ARGS.
"""
from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile

# The gateway's own settings, so limits agree with the app. gunicorn puts its working directory on
# sys.path before it reads this file: run it from the checkout's root (systemd: WorkingDirectory).
try:
    from image_gateway import settings as _settings
except ModuleNotFoundError as error:
    raise SystemExit("deploy/gunicorn.conf.py: cannot import settings; start gunicorn in the gateway's "
                     "checkout directory (cd /opt/gateway && gunicorn -c deploy/gunicorn.conf.py ...)") from error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_config = _settings.load()

bind = [f"{_config.host}:{_config.port}"]
worker_class = "gthread"
workers = int(os.environ.get("GUNICORN_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 2)
threads = int(os.environ.get("GUNICORN_THREADS") or 32)
# A gthread worker heartbeats from its main loop, so `timeout` only catches a wedged process; it
# must still outlast the longest handler, which answers 504 by itself after REQUEST_TIMEOUT.
timeout = math.ceil(_config.request_timeout) + 20
# On SIGTERM a process stops accepting and lets every waiting request get its answer or its 504.
graceful_timeout = math.ceil(_config.request_timeout) + 5
# Longer than nginx's upstream keepalive_timeout (60 s), so nginx, not gunicorn, closes idle
# connections: no request is ever written to a socket the server is closing.
keepalive = 75
proc_name = f"gateway-web:{_config.port}"
wsgi_app = "run_server:app"
chdir = ROOT
errorlog = "-"
# gunicorn >= 24 opens a control socket at ~/.gunicorn/gunicorn.ctl: several web servers on one host
# would fight over it, and a hardened unit has no writable home. Older versions ignore the name.
control_socket_disable = True
loglevel = _config.log_level.lower()

# --------------------------------------------------------------------------- Prometheus, per process
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Set once: a config reload (SIGHUP) re-reads this file but keeps the master's environment.
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="gateway-prometheus-")
    os.environ["GATEWAY_OWNS_PROMETHEUS_DIR"] = "1"   # so on_exit removes what this file made
_multiproc_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]


def on_starting(server) -> None:
    """Counters of a previous run in the same directory must not be added to this one's."""
    os.makedirs(_multiproc_dir, exist_ok=True)
    for stale in glob.glob(os.path.join(_multiproc_dir, "*.db")):
        os.remove(stale)


def post_worker_init(worker) -> None:
    """The app is loaded (image_gateway.wsgi set up logging); start its task feeder in this process."""
    worker.wsgi.extensions["feeder"].start()


def child_exit(server, worker) -> None:
    from prometheus_client import multiprocess
    multiprocess.mark_process_dead(worker.pid)


def on_exit(server) -> None:
    if os.environ.get("GATEWAY_OWNS_PROMETHEUS_DIR"):
        shutil.rmtree(_multiproc_dir, ignore_errors=True)
