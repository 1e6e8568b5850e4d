"""What the machine and its processes do: CPU seconds from /proc and getrusage, and the machine's description."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import resource
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from image_gateway import settings as settings_module

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------------------ CPU accounting
def read_stat(pid: int) -> tuple[str, int, float] | None:
    """(command name, parent pid, utime+stime seconds) from /proc/<pid>/stat; None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    fields = text[text.rindex(")") + 2:].split()
    return name, int(fields[1]), (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def process_tree(root: int) -> list[int]:
    """root and all its descendants (the gateway and its embedded redis-server)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = read_stat(int(entry))
            if stat:
                children.setdefault(stat[1], []).append(int(entry))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def tree_cpu(root: int | None) -> dict[str, float]:
    """CPU seconds so far of each process of the tree, by '<name>:<pid>'."""
    if root is None:
        return {}
    cpu = {}
    for pid in process_tree(root):
        stat = read_stat(pid)
        if stat:
            cpu[f"{stat[0]}:{pid}"] = stat[2]
    return cpu


def cpu_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def machine_busy_s() -> float:
    """CPU seconds all processes of the machine have been busy (from /proc/stat), to see other load."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / CLOCK_TICKS


def children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (the raw-model child processes)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------------------ machine, settings
def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return ""
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def machine_info() -> dict:
    from PIL import features

    return {
        "cpu_model": _cpu_model(), "nproc": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
        "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "kernel": platform.release(), "python": platform.python_version(),
        "tensorflow": _version("tensorflow") or _version("tensorflow-cpu"), "keras": _version("keras"),
        "numpy": np.__version__, "pillow": _version("pillow"),
        "libjpeg_turbo": features.check_feature("libjpeg_turbo"),
        "flask": _version("flask"), "werkzeug": _version("werkzeug"),
        "redis_py": _version("redis"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
    }


def settings_record(config: settings_module.Settings, source: str) -> dict:
    record = {k: v for k, v in config.__dict__.items() if k not in ("api_key", "redis_url")}
    record["redis"] = "REDIS_URL" if config.redis_url else "embedded"
    record["source"] = source
    return record
