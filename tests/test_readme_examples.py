"""Every example of README.md, deploy/README.md and bench/README.md runs as printed, as a newcomer would run it
(`python -m pytest -k readme` runs these alone).

Sybil reads the Markdown: ```python blocks run in one namespace per file (doctest blocks, `>>>`, compare
their output with ELLIPSIS and NUMBER), ```bash and ```console blocks run through `run_shell` below
(tests/readme_blocks.py says how a block shows output and names its layout), and `<!-- skip: next "why" -->`
right before a block skips it, saying why. ```text and ```json blocks show diagrams, trees and file contents:
nothing to run.

The examples run in a copy of the checkout made of links (what they write stays there), with the
environment of a fresh shell (no gateway settings; the suite's LiteRT cache), against the layout each block
names, started here as the block shows it on a free port that replaces the shown one (and the client's
default URL, through GATEWAY_URL): `python run_server.py` (the embedded default, kept up for the module) or
one other layout at a time (`MODELS=mtcnn python run_server.py`, `python -m deploy.cluster ...`). curl runs
with `--fail-with-body`, so an HTTP error fails its example.
"""
from __future__ import annotations

import contextlib
import doctest
import os
import re
import signal
import subprocess
import sys
import time
import unittest
from dataclasses import dataclass, field, fields
from pathlib import Path

import pytest
from readme_blocks import DEFAULT, Command, Layout, matches, parse, with_port
from sybil import Lexeme, Sybil
from sybil.evaluators.doctest import NUMBER
from sybil.parsers.markdown import CodeBlockParser, PythonCodeBlockParser, SkipParser
from sybil.parsers.markdown.lexers import FencedCodeBlockLexer

from conftest import ARTIFACTS, ROOT
from image_gateway import processes
from image_gateway.redis_server import free_port
from image_gateway.settings import Settings

DOCS = ("README.md", "deploy/README.md", "bench/README.md")
RUN = ("bash", "console", "python")
SHOWN_ONLY = ("text", "json")       # diagrams, trees, file contents
NOT_LINKED = {".git", ".venv", ".pytest_cache", "build", "gateway-data", "__pycache__"}
READY_TIMEOUT_S = 240                # a cold LiteRT cache converts each model once
BLOCK_TIMEOUT_S = 240
CURL = 'curl() { command curl --silent --show-error --fail-with-body "$@"; }\n'
STATUS = re.compile(r"\n?\x1e(\d+)\n")


class Running:
    """A layout started as its block shows it, with the port replaced, its output in a log file."""

    def __init__(self, layout: Layout, workdir: Path, env: dict[str, str]):
        self.layout, self.port = layout, free_port()
        self.log = workdir / f"{layout.kind}-{self.port}.log"
        entry = ["run_server.py"] if layout.kind == "embedded" else ["-m", "deploy.cluster"]
        env = {**env, **dict(layout.env)}
        if layout.kind == "embedded" and not layout.is_default:
            env.setdefault("DATA_DIR", f"gateway-data-{self.port}")     # one gateway per DATA_DIR
        self.process = processes.start([sys.executable, *entry, *layout.args, "--port", str(self.port)],
                                       log_path=self.log, env=env, cwd=workdir, new_session=True,
                                       die_with_parent=True)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self.ready():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"{self} did not become ready:\n{self.output()[-3000:]}")
            time.sleep(0.2)

    def __str__(self) -> str:
        env = " ".join(f"{name}={value}" for name, value in self.layout.env)
        return f"{env} {' '.join(self.process.args[1:])}".strip()

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def printed(self, shown: str, timeout_s: float = 10) -> bool:
        """Whether its output is (or, within timeout_s, becomes: lines after `ready:` may still come) `shown`."""
        deadline = time.monotonic() + timeout_s
        while not matches(shown, self.output()):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def ready(self) -> bool:
        """The cluster: its `ready:` line. The embedded default: /readyz, and every model it lists READY."""
        if self.layout.kind == "cluster":
            return any(line.startswith("ready:") for line in self.output().splitlines())
        url = f"http://127.0.0.1:{self.port}"
        statuses = [processes.http_get(url + path, 5) for path in ("/readyz", "/v2/health/ready", "/v1/models")]
        return all(status == 200 for status, _ in statuses) and b'"LOADING"' not in statuses[-1][1]

    def stop(self) -> int | None:
        """Ctrl-C for the cluster's launcher, SIGTERM for the embedded default: each stops in order."""
        graceful = signal.SIGINT if self.layout.kind == "cluster" else signal.SIGTERM
        return processes.stop(self.process, 90, graceful)


@dataclass
class Newcomer:
    """The copy of the checkout, the shell's environment, and the layouts started so far."""
    workdir: Path | None = None
    env: dict[str, str] = field(default_factory=dict)
    running: dict[Layout, Running] = field(default_factory=dict)

    def layout(self, layout: Layout) -> Running:
        """The layout, started if it is not running; a layout other than the default stops the other one."""
        if layout not in self.running:
            for other in [other for other in self.running if not other.is_default]:
                self.stop(other)
            self.running[layout] = Running(layout, self.workdir, self.env)
        return self.running[layout]

    def stop(self, layout: Layout) -> None:
        if layout in self.running:
            self.running.pop(layout).stop()

    def execute(self, commands: list[str], running: Running) -> tuple[list[tuple[int, str]], str]:
        """Run the commands in one bash, in order: (exit status, stdout) of each, and the whole stderr. The
        client's default URL (port 5000) is the running layout's, through its GATEWAY_URL."""
        env = dict(self.env)
        if running.layout.shown_port == DEFAULT.shown_port:
            env["GATEWAY_URL"] = f"http://127.0.0.1:{running.port}"
        script = CURL + "".join(f"{command}\n__status=$?; printf '\\n\\036%d\\n' \"$__status\"\n"
                                for command in commands)
        with subprocess.Popen(["bash", "-c", script], cwd=self.workdir, env=env, text=True,
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              start_new_session=True) as shell:
            try:
                stdout, stderr = shell.communicate(timeout=BLOCK_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                os.killpg(shell.pid, signal.SIGKILL)
                stdout, stderr = shell.communicate()
        pieces = STATUS.split(stdout)
        return [(int(pieces[i + 1]), pieces[i]) for i in range(0, len(pieces) - 1, 2)], stderr


NEWCOMER = Newcomer()


def run_shell(example) -> str | None:
    """A bash or console block: start its layout, run its commands, compare what they print with what it
    shows. None when all is as shown, else what differs."""
    commands = parse(example.parsed)
    layout = next((command.starts for command in commands if command.starts), DEFAULT)
    running = NEWCOMER.layout(layout)
    port = lambda text: with_port(text, layout.shown_port, running.port)  # noqa: E731
    server = next((command for command in commands if command.starts), None)
    shown = port(server.shown) if server and server.shown else None
    if shown and not running.printed(shown.split("\n^C")[0]):
        return differs(server, running.output(), shown.split("\n^C")[0])
    others = [command for command in commands if command.starts is None]
    results, stderr = NEWCOMER.execute([port(command.text) for command in others], running)
    for command, (status, stdout) in zip(others, results, strict=False):
        if status != 0:
            return f"`{command.text}` exited {status}; it printed:\n{stdout}\nand on stderr:\n{stderr[-3000:]}"
        if command.shown and not matches(port(command.shown), stdout):
            return differs(command, stdout, port(command.shown))
    if len(results) != len(others):
        return f"the block stopped after {len(results)} of {len(others)} commands:\n{stderr[-3000:]}"
    if shown and "\n^C" in shown:                                   # the transcript's Ctrl-C
        NEWCOMER.stop(layout)
        if not running.printed(shown.replace("\n^C", ""), timeout_s=0):
            return differs(server, running.output(), shown.replace("\n^C", ""))
    return None


def differs(command: Command, printed: str, shown: str) -> str:
    return f"`{command.text}` printed:\n{printed.strip()}\n\nwhere the block shows:\n{shown}"


class InLayout:
    """A Python example's evaluator, run in the copy of the checkout against the embedded default."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def __call__(self, example):
        running = NEWCOMER.layout(DEFAULT)
        parsed = example.parsed
        if isinstance(parsed, doctest.Example):
            parsed.source = with_port(parsed.source, DEFAULT.shown_port, running.port)
        else:
            example.parsed = Lexeme(with_port(parsed, DEFAULT.shown_port, running.port), parsed.offset,
                                    parsed.line_offset)
        with contextlib.chdir(NEWCOMER.workdir):
            return self.evaluator(example)


def in_layout(parser):
    def parse_document(document):
        for region in parser(document):
            region.evaluator = InLayout(region.evaluator)
            yield region
    return parse_document


SYBIL = Sybil(parsers=[
    CodeBlockParser("bash", run_shell),
    CodeBlockParser("console", run_shell),
    in_layout(PythonCodeBlockParser(doctest_optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE | NUMBER)),
    SkipParser(),
])


@dataclass
class Block:
    """One fenced block of a README: its language, Sybil's examples in it, and the skip directives before it."""
    doc: str
    line: int
    language: str
    examples: list = field(default_factory=list)
    directives: list = field(default_factory=list)

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def read_blocks() -> list[Block]:
    blocks = []
    for doc in DOCS:
        document = SYBIL.parse(ROOT / doc)
        fences = {region.start: (region.end, region.lexemes["language"])
                  for region in FencedCodeBlockLexer(language=".*")(document)}
        by_start = {start: Block(doc, document.text.count("\n", 0, start) + 1, language)
                    for start, (_, language) in fences.items()}
        directives = []
        for example in document:
            start = next((start for start, (end, _) in fences.items() if start <= example.start < end), None)
            if start is None:
                directives.append(example)
                continue
            block = by_start[start]
            block.directives, directives = block.directives + directives, []
            block.examples.append(example)
        blocks += sorted(by_start.values(), key=lambda block: (DOCS.index(block.doc), block.line))
    return blocks


BLOCKS = read_blocks()


@pytest.fixture(scope="module")
def newcomer(tmp_path_factory):
    """A copy of the checkout made of links, a fresh shell's environment; every layout stopped at the end
    of this module (the tests after it do not share the machine with an idle gateway)."""
    workdir = tmp_path_factory.mktemp("checkout")
    for entry in ROOT.iterdir():
        if entry.name not in NOT_LINKED and not entry.name.endswith(".egg-info"):
            (workdir / entry.name).symlink_to(entry)
    settings = {item.name.upper() for item in fields(Settings)} | {"GATEWAY_URL"}
    env = {name: value for name, value in os.environ.items() if name not in settings}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", PYTHONUNBUFFERED="1",
               LITERT_CACHE_DIR=str(ARTIFACTS / "litert-cache"))    # converted once for the whole suite
    NEWCOMER.workdir, NEWCOMER.env = workdir, env
    yield NEWCOMER
    for layout in list(NEWCOMER.running):
        NEWCOMER.stop(layout)


@pytest.mark.parametrize("block", [block for block in BLOCKS if block.examples], ids=str)
def test_readme_example(block: Block, newcomer):
    for directive in block.directives:
        directive.evaluate()
    try:
        for example in block.examples:
            example.evaluate()
    except unittest.SkipTest as skip:
        pytest.skip(f"{block}: {skip}")


def test_every_readme_block_runs_is_skipped_with_a_reason_or_only_shows_text():
    for block in BLOCKS:
        assert block.language in RUN + SHOWN_ONLY, f"{block}: a ```{block.language} block (say what it is)"
        assert bool(block.examples) == (block.language in RUN), f"{block}: {block.language}, yet not collected"
        for directive in block.directives:
            action, reason = directive.parsed
            assert action == "next" and reason and eval(reason), f"{block}: skipped without a reason"
    skipped = [block for block in BLOCKS if block.directives]
    assert len(skipped) < len([block for block in BLOCKS if block.examples]) / 2


def test_a_shell_block_reads_as_commands_with_their_output_and_layout():
    commands = parse("MODELS=mtcnn python run_server.py    # prose\ncurl http://127.0.0.1:5000/v1/models \\\n"
                     "  -s\n# {\"models\": [...]}\n\n# prose again\npython simple_request.py x.jpg\n")
    assert [command.starts for command in commands] == [Layout("embedded", (("MODELS", "mtcnn"),)), None, None]
    assert [command.shown for command in commands] == [None, '{"models": [...]}', None]
    console = parse("$ python -m deploy.cluster --web 2 --port 8080\nready: http://127.0.0.1:8080\n^C\nstopped\n")
    assert console[0].starts == Layout("cluster", (), ("--web", "2"), 8080)
    assert console[0].shown == "ready: http://127.0.0.1:8080\n^C\nstopped"


def test_shown_output_elides_with_dots_rounds_numbers_and_can_fail():
    printed = '{"id":"5f0c-77","predictions":[{"label":"espresso","probability":0.953142},{"label":"cup"}]}'
    assert matches('{"id": "5f0c...", "predictions": [{"label": "espresso", "probability": 0.953}, ...]}',
                   printed)
    assert matches("1. Egyptian_cat: 0.3777\n...", "1. Egyptian_cat: 0.37774\n2. tiger_cat: 0.3645")
    assert not matches("1. tiger_cat: 0.3850\n...", "1. Egyptian_cat: 0.3777\n2. tiger_cat: 0.3645")
    assert not matches('{"probability": 0.95}', '{"probability": 0.9621}')
    assert not matches('{"id": "5f0c..."}', printed)
