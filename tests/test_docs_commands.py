"""The docs cannot drift from the code: every dotted name the README cites resolves, and every `python ...`
command that README.md, deploy/README.md and bench/README.md print starts (`--help` exits 0)."""
from __future__ import annotations

import importlib
import re
import shlex
import subprocess
import sys

import pytest

from conftest import ROOT

DOCS = [ROOT / "README.md", ROOT / "deploy" / "README.md", ROOT / "bench" / "README.md"]
FILE_SUFFIXES = (".py", ".json", ".jsonl", ".keras", ".txt", ".onnx", ".tflite", ".conf", ".pem", ".jpg", ".png",
                 ".md", ".sh", ".service", ".html", ".js", ".css", ".acl", ".toml", ".npz", ".h5", ".gz", ".whl",
                 ".template", ".db", ".cfg")
HOST_SUFFIXES = (".internal", ".example", ".com", ".org", ".local")   # host names in URL_ALLOWLIST examples
DOTTED = re.compile(r"`([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+)(?:\([^`]*\))?`")
PYTHON_COMMAND = re.compile(r"(?:^|&&|;|\|)[ \t]*(?:\$[ \t]+)?(?:[A-Z_]+=\S*[ \t]+)*"   # after a prompt or VAR=...
                            r"(python (?:-m [\w.]+|[\w/.-]+\.py))(?=\s|$)", re.MULTILINE)


def cited_names(text: str) -> set[str]:
    """`module.function`, `Class.method` and `package.module.name` in backticks (not file names)."""
    return {name for name in DOTTED.findall(text)
            if not name.endswith(FILE_SUFFIXES + HOST_SUFFIXES) and not name[0].isdigit()}


def package_modules() -> list[str]:
    package = ROOT / "image_gateway"
    names = [".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
             for path in sorted(package.rglob("*.py"))]
    return [name for name in names if name != "image_gateway.wsgi"]     # importing it builds the app


def resolve(name: str) -> bool:
    """Whether `name` is real code: a module path then attributes, tried under image_gateway first; or a
    class of the package followed by its attributes (`JobQueue.enqueue`)."""
    parts = name.split(".")
    for prefix in ("image_gateway.", ""):
        for cut in range(len(parts), 0, -1):
            module = prefix + ".".join(parts[:cut])
            if module == "image_gateway.wsgi":
                continue
            try:
                target = importlib.import_module(module)
            except ImportError:
                continue
            if _has_path(target, parts[cut:]):
                return True
    for module in package_modules():
        if _has_path(importlib.import_module(module), parts):
            return True
    return False


def _has_path(target, attributes: list[str]) -> bool:
    for attribute in attributes:
        if not hasattr(target, attribute):
            return False
        target = getattr(target, attribute)
    return True


def test_the_name_check_can_fail():
    assert resolve("JobQueue.enqueue") and resolve("imaging.prepare_image") and resolve("web.jobs.submit")
    assert not resolve("JobQueue.cached") and not resolve("run_job.anything")
    assert cited_names("`a.b` `settings.py` `x.json` `f.g(h)`") == {"a.b", "f.g"}


def test_every_dotted_name_in_the_readme_is_real_code():
    names = cited_names((ROOT / "README.md").read_text())
    assert len(names) > 20
    assert sorted(name for name in names if not resolve(name)) == []


def shell_blocks(text: str) -> list[str]:
    """The fenced blocks marked bash, sh or shell, or not marked."""
    blocks, current, language = [], None, ""
    for line in text.splitlines():
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                if language in ("", "bash", "sh", "shell"):
                    blocks.append("\n".join(current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def documented_commands() -> list[str]:
    commands = set()
    for doc in DOCS:
        for block in shell_blocks(doc.read_text()):
            commands |= set(PYTHON_COMMAND.findall(block))
    return sorted(commands)


def test_the_docs_print_the_entry_points():
    commands = documented_commands()
    for expected in ("python run_server.py", "python classify_worker.py", "python simple_request.py",
                     "python deploy/cluster.py", "python -m bench"):
        assert expected in commands


@pytest.mark.parametrize("command", documented_commands())
def test_every_documented_python_command_starts(command):
    args = shlex.split(command)
    if args[1:] == ["-m", "json.tool"]:
        pytest.skip("the standard library's json.tool reads stdin")
    done = subprocess.run([sys.executable, *args[1:], "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "usage" in done.stdout.lower()
