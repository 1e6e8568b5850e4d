"""A whole gateway on loopback: redis-server, N gunicorn web servers, M model workers, nginx in front.

    python -m deploy.cluster --web 2 --workers 2 --port 8080     # or: python deploy/cluster.py ...
    python -m deploy.cluster --redis-cluster 3      # a 3-master, 3-replica Redis Cluster instead of one Redis

Stays in the foreground; Ctrl-C or SIGTERM stops everything it started, in an order that loses no
request: workers first (they return the jobs they claimed), then the web servers (they finish the
requests they hold), then nginx, then Redis. Settings come from the environment as for every
process of the gateway (HEARTBEAT_TTL=2 python -m deploy.cluster ...). Tests use `Cluster` directly.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable

if __name__ == "__main__" and not __package__:
    # `python deploy/cluster.py`: the same as `python -m deploy.cluster` run from the checkout's root, so
    # that deploy and image_gateway import as packages (the script's own folder is not the root).
    _root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    _path = os.pathsep.join(filter(None, [_root, os.environ.get("PYTHONPATH")]))
    os.execve(sys.executable, [sys.executable, "-m", "deploy.cluster", *sys.argv[1:]],
              {**os.environ, "PYTHONPATH": _path})

from deploy import nginx_conf  # noqa: E402
from image_gateway import processes  # noqa: E402
from image_gateway import settings as settings_module  # noqa: E402
from image_gateway.redis_server import RedisCluster, RedisServer, free_port  # noqa: E402
from image_gateway.redis_url import redact, resolve  # noqa: E402

DEPLOY_DIR = os.path.dirname(os.path.abspath(__file__))
REDIS_CONF = os.path.join(DEPLOY_DIR, "redis.conf")   # AOF everysec, no RDB, noeviction
USERS_ACL = os.path.join(DEPLOY_DIR, "users.acl")     # the `gateway` user's allowlist
ROOT = os.path.dirname(DEPLOY_DIR)
GUNICORN_CONF = os.path.join(DEPLOY_DIR, "gunicorn.conf.py")
PROBE_TIMEOUT_S = 3.0   # of each readiness GET
# Variables the cluster sets per process; inherited values would give every process the same one.
PER_PROCESS = ("PORT", "SERVER_NAME", "METRICS_PORT", "PROMETHEUS_MULTIPROC_DIR", "GATEWAY_OWNS_PROMETHEUS_DIR")


class ClusterError(RuntimeError):
    """A process of the cluster died or the cluster did not become ready; the message says which."""


class ClusterStopped(Exception):
    """start() was interrupted by stop_requested (Ctrl-C while starting)."""


class Child:
    """One process the cluster started: its name, log file and (for servers) URL."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], log_path: str,
                 url: str | None = None, stop_signal: int = signal.SIGTERM):
        self.name, self.args, self.env, self.log_path = name, args, env, log_path
        self.url = url
        self.stop_signal = stop_signal
        self.process: subprocess.Popen | None = None
        self.stopped_on_purpose = False

    def start(self) -> Child:
        # Own session: a Ctrl-C in the terminal reaches only the launcher, which stops us in order.
        self.process = processes.start(self.args, log_path=self.log_path, append=True, env=self.env, cwd=ROOT,
                                       new_session=True, die_with_parent=True)
        return self

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def send_stop(self) -> None:
        """Ask the process to stop gracefully (SIGTERM; SIGQUIT for nginx) without waiting."""
        self.stopped_on_purpose = True
        if self.alive:
            self.process.send_signal(self.stop_signal)

    def wait_stopped(self, timeout_s: float) -> int | None:
        """Wait for the exit; SIGKILL after `timeout_s`. Returns the exit code."""
        return processes.wait_or_kill(self.process, timeout_s) if self.process else None

    def terminate(self, timeout_s: float = 30.0) -> int | None:
        """Graceful stop and wait (tests: `cluster.web[0].terminate()`)."""
        self.stopped_on_purpose = True
        return processes.stop(self.process, timeout_s, self.stop_signal)

    def kill(self) -> int | None:
        """SIGKILL: no goodbye (a crashed worker leaves its heartbeat to expire)."""
        self.stopped_on_purpose = True
        if self.alive:
            self.process.kill()
        return self.wait_stopped(5)

    def tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as log:
                return "".join(deque(log, maxlen=lines))
        except OSError:
            return ""

    def describe(self) -> str:
        where = self.url or f"pid {self.pid}"
        return f"  {self.name:<10} {where:<34} pid {self.pid:<7} log {self.log_path}"


def gateway_acl(prefix: str, path: str = USERS_ACL) -> list[str]:
    """The rules of the `gateway` user in deploy/users.acl, without its on/off state and password (the
    cluster sets a random one) and with its key pattern on KEY_PREFIX."""
    with open(path, encoding="utf-8") as file:
        line = next(line for line in file if line.split()[:2] == ["user", "gateway"])
    state = {"on", "off", "nopass", "resetpass"}
    rules = [rule for rule in line.split()[2:] if rule not in state and rule[0] not in "><#!"]
    return [f"~{prefix}:*" if rule == "~gw:*" else rule for rule in rules]


class Cluster:
    """Start with `start()`, stop with `stop()` (or use it as a context manager)."""

    def __init__(self, web: int = 2, workers: int = 2, port: int = 0, redis_url: str | None = None,
                 gunicorn_workers: int = 1, env: dict[str, str] | None = None, run_dir: str | None = None,
                 host: str = "127.0.0.1", say: Callable[[str], None] = lambda line: None, redis_cluster: int = 0,
                 nginx: bool = True):
        if web < 1 or workers < 0:
            raise ValueError("a cluster needs at least one web server (and zero or more workers)")
        self.host = host
        self.port = port or free_port(host)
        self.web_count, self.worker_count, self.gunicorn_workers = web, workers, gunicorn_workers
        self.redis_url = redis_url
        self.extra_env = dict(env or {})
        self.run_dir = run_dir or tempfile.mkdtemp(prefix="gateway-cluster-")
        self.say = say
        self.redis_cluster = redis_cluster       # masters of a Redis Cluster (each with a replica); 0: one Redis
        self.redis: RedisServer | RedisCluster | None = None
        self.web: list[Child] = []
        self.workers: list[Child] = []
        self.nginx: Child | None = None
        self.use_nginx = nginx                   # False: clients call the (first) web server itself
        self.stop_requested = threading.Event()

    @property
    def url(self) -> str:
        """nginx's URL: the one address clients use (the first web server's without nginx)."""
        return f"http://{self.host}:{self.port}" if self.use_nginx else self.web[0].url

    @property
    def children(self) -> list[Child]:
        return self.workers + self.web + ([self.nginx] if self.nginx else [])

    # --------------------------------------------------------------------------------- start
    def start(self, timeout_s: float = 180.0) -> Cluster:
        """Start every process, then wait until /readyz through nginx is 200 and all workers are live."""
        os.makedirs(self.run_dir, exist_ok=True)
        if os.geteuid() == 0:   # nginx's workers drop to `nobody`, which must reach the temp paths
            os.chmod(self.run_dir, 0o755)
        try:
            self._start_redis()
            self._start_workers()   # first: loading the model is the slowest step
            self._start_web()
            if self.use_nginx:
                self._start_nginx()
            self.wait_ready(timeout_s)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_redis(self) -> None:
        """Its own Redis unless given one: deploy/redis.conf in the run directory, private (the `gateway`
        user of deploy/users.acl with a random password; the URL reaches the children in their environment)."""
        if self.redis_cluster:
            self.extra_env["REDIS_CLUSTER"] = "1"
        if self.redis_url:
            self.say(f"  {'redis':<10} {redact(self.redis_url)} (not started here)")
            return
        if self.redis_cluster:
            self.redis = RedisCluster(masters=self.redis_cluster, new_session=True).start()
        else:
            prefix = settings_module.load(self._env()).key_prefix
            self.redis = RedisServer(new_session=True, config_file=REDIS_CONF, acl=gateway_acl(prefix),
                                     data_dir=os.path.join(self.run_dir, "redis")).start()
        self.redis_url = self.redis.url
        for server in getattr(self.redis, "servers", [self.redis]):
            self.say(f"  {'redis':<10} {'redis://' + server.address:<34} pid {server.process.pid}")

    def _env(self, **per_process: str) -> dict[str, str]:
        """A child's environment: the launcher's, the cluster's settings, and REDIS_URL (never its command line)."""
        env = {k: v for k, v in os.environ.items() if k not in PER_PROCESS and k != "REDIS_URL_FILE"}
        env.update(self.extra_env)
        env.update({"REDIS_URL": self.redis_url or "", "HOST": self.host, "PYTHONUNBUFFERED": "1"})
        env.update(per_process)
        return env

    def _log(self, name: str) -> str:
        return os.path.join(self.run_dir, f"{name}.log")

    def _start_workers(self) -> None:
        for i in range(self.worker_count):
            metrics_port = free_port(self.host)
            child = Child(f"worker-{i}", [sys.executable, os.path.join(ROOT, "classify_worker.py")],
                          self._env(METRICS_PORT=str(metrics_port)), self._log(f"worker-{i}"),
                          url=f"http://{self.host}:{metrics_port}/metrics")
            self.workers.append(child.start())
            self.say(child.describe())

    def _start_web(self) -> None:
        for i in range(self.web_count):
            port = free_port(self.host)
            metrics_dir = os.path.join(self.run_dir, f"prometheus-web-{i}")
            os.makedirs(metrics_dir, exist_ok=True)
            env = self._env(PORT=str(port), SERVER_NAME=f"web-{i}", PROMETHEUS_MULTIPROC_DIR=metrics_dir,
                            GUNICORN_WORKERS=str(self.gunicorn_workers))
            child = Child(f"web-{i}", [sys.executable, "-m", "gunicorn", "-c", GUNICORN_CONF, "run_server:app"],
                          env, self._log(f"web-{i}"), url=f"http://{self.host}:{port}")
            self.web.append(child.start())
            self.say(child.describe())

    def _start_nginx(self) -> None:
        prefix = os.path.join(self.run_dir, "nginx")
        upstreams = [child.url.removeprefix("http://") for child in self.web]
        config = settings_module.load(self._env())   # the web servers' limits, not the launcher's
        text = nginx_conf.render(upstreams, f"{self.host}:{self.port}", prefix, config, worker_processes="1")
        conf = nginx_conf.write(os.path.join(prefix, "nginx.conf"), text, prefix)
        args = nginx_conf.command(nginx_conf.find_nginx(), prefix, conf)
        self.nginx = Child("nginx", args, self._env(), os.path.join(prefix, "error.log"), url=self.url,
                           stop_signal=signal.SIGQUIT)   # SIGQUIT: graceful (SIGTERM drops connections)
        self.nginx.start()
        self.say(self.nginx.describe() + f"  (access log {os.path.join(prefix, 'access.log')})")

    # ----------------------------------------------------------------------------- readiness
    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            self.check_alive()
            if self.stop_requested.is_set():
                raise ClusterStopped()
            if time.monotonic() > deadline:
                raise ClusterError(f"not ready after {timeout_s:g} s: {self.why_not_ready()}")
            time.sleep(0.2)

    def ready(self) -> bool:
        """Every web server up, /readyz through nginx 200, and every started worker heartbeating."""
        if not all(processes.http_get(child.url + "/healthz", PROBE_TIMEOUT_S)[0] == 200 for child in self.web):
            return False
        readyz = processes.get_json(self.url + "/readyz", PROBE_TIMEOUT_S)    # None unless 200; public, no key
        return isinstance(readyz, dict) and readyz.get("live_workers", 0) >= sum(child.alive for child in self.workers)

    def live_workers(self) -> int:
        """The default model's live workers, from /readyz: public, so the probe needs no key with API_KEY or
        CLIENTS set (its 503 body still counts them); -1 when it does not answer with a count."""
        try:
            body = json.loads(processes.http_get(self.url + "/readyz", PROBE_TIMEOUT_S)[1])
        except ValueError:
            return -1
        live = body.get("live_workers") if isinstance(body, dict) else None
        return live if isinstance(live, int) else -1

    def why_not_ready(self) -> str:
        status, body = processes.http_get(self.url + "/readyz", PROBE_TIMEOUT_S)
        return f"GET {self.url}/readyz answered {status} {body[:200].decode(errors='replace')!r}"

    def check_alive(self) -> None:
        """Raise ClusterError naming the first process that died unasked, with the end of its log."""
        for child in self.dead_children():
            raise ClusterError(f"{child.name} (pid {child.pid}) exited with code {child.process.returncode}; "
                               f"last lines of {child.log_path}:\n{child.tail()}")
        for server in getattr(self.redis, "servers", [self.redis] if self.redis else []):
            if server.process.poll() is not None:
                raise ClusterError(f"redis-server {server.address} exited with code {server.process.returncode}")

    def dead_children(self) -> list[Child]:
        return [c for c in self.children if c.process is not None and not c.alive and not c.stopped_on_purpose]

    # ---------------------------------------------------------------------------------- stop
    def stop(self) -> None:
        """Workers (they hand back claimed jobs), then web (in-flight requests finish), nginx, Redis."""
        self._stop_group(self.workers, timeout_s=30)
        self._stop_group(self.web, timeout_s=60)
        self._stop_group([self.nginx] if self.nginx else [], timeout_s=15)
        if self.redis:
            self.redis.close()

    @staticmethod
    def _stop_group(children: list[Child], timeout_s: float) -> None:
        for child in children:
            child.send_stop()
        for child in children:
            child.wait_stopped(timeout_s)

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ command line
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deploy.cluster",
                                     description="Run the gateway on loopback: Redis, web servers, workers, nginx.")
    parser.add_argument("--web", type=int, default=2, help="web servers (gunicorn), default 2")
    parser.add_argument("--workers", type=int, default=2, help="model workers (classify_worker.py), default 2")
    parser.add_argument("--port", type=int, default=8080, help="nginx's port, default 8080")
    parser.add_argument("--gunicorn-workers", type=int, default=1, help="processes per web server, default 1")
    parser.add_argument("--redis-url", help="use this Redis instead of starting a redis-server (a password in it "
                                            "shows in the process list: prefer REDIS_URL or REDIS_URL_FILE)")
    parser.add_argument("--redis-cluster", type=int, default=0, metavar="MASTERS",
                        help="start a Redis Cluster of MASTERS masters (>= 3), each with one replica, "
                             "instead of one redis-server; the gateway runs with REDIS_CLUSTER=1")
    parser.add_argument("--run-dir", help="directory for logs and nginx's files (default: a new temp dir)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for readiness")
    return parser.parse_args(argv)


def serve_until_stopped(cluster: Cluster) -> None:
    """Block until Ctrl-C/SIGTERM; report (once) any process that dies meanwhile."""
    reported: set[str] = set()
    while not cluster.stop_requested.wait(1.0):
        for child in cluster.dead_children():
            if child.name not in reported:
                reported.add(child.name)
                print(f"warning: {child.name} exited with code {child.process.returncode}; "
                      f"last lines of {child.log_path}:\n{child.tail(10)}", flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    say = lambda line: print(line, flush=True)  # noqa: E731
    given = args.redis_url or resolve(settings_module.load()).redis_url
    cluster = Cluster(web=args.web, workers=args.workers, port=args.port, redis_url=given or None,
                      gunicorn_workers=args.gunicorn_workers, run_dir=args.run_dir, say=say,
                      redis_cluster=args.redis_cluster)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: cluster.stop_requested.set())
    say(f"gateway cluster, run directory {cluster.run_dir}")
    try:
        cluster.start(args.timeout)
    except ClusterStopped:
        say(f"stopped before it was ready; logs in {cluster.run_dir}")
        return 0
    except (ClusterError, RuntimeError) as error:
        say(f"error: {error}")
        return 1
    say(f"ready: {cluster.url}  ({args.web} web servers, {args.workers} workers; Ctrl-C to stop)")
    say(f"  try: python simple_request.py tests/data/cat.jpg --url {cluster.url}")
    serve_until_stopped(cluster)
    say("stopping: workers, then web servers, then nginx, then redis ...")
    cluster.stop()
    say(f"stopped; logs in {cluster.run_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
