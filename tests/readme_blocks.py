"""What a README's shell example says, for tests/test_readme_examples.py: its commands, the output each one
shows, the gateway layout it runs against, and whether a real output is the one shown.

A ```bash block is a script: each command (with `\\` continuations) may be followed by `# ` lines, which show
what it prints (stdout). A comment at the end of a command line is prose. A ```console block is a terminal
transcript: `$ ` lines are commands, the lines under one are its output, and a `^C` line is a Ctrl-C.
In shown output `...` elides any text (including none), and a number with a fraction matches a printed one
within one unit of its last shown digit (as Sybil's NUMBER doctest flag does).

A block runs against a layout: the embedded default, `python run_server.py` on port 5000, unless one of its
lines starts another (`MODELS=mtcnn python run_server.py`, `python -m deploy.cluster --port 8080`). The
checks start that layout themselves, on a free port that replaces the shown one throughout the block.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field

SERVER = re.compile(r"^(?P<env>(?:[A-Z_]+=\S*\s+)*)python\s+(?P<entry>run_server\.py|-m\s+deploy\.cluster|"
                    r"deploy/cluster\.py)(?P<args>(?:\s+[^\s&#]+)*)\s*&?\s*(?:#.*)?$")
DEFAULT_PORTS = {"embedded": 5000, "cluster": 8080}        # run_server.py's and deploy.cluster's --port
ELISION_OR_NUMBER = re.compile(r"(\.\.\.|-?\d+\.\d+|\s+)")
DECIMAL = re.compile(r"-?\d+\.\d+")


@dataclass(frozen=True)
class Layout:
    """How the gateway runs: `embedded` (python run_server.py) or `cluster` (python -m deploy.cluster), the
    environment variables and arguments its command line gives, and the port the block shows."""
    kind: str = "embedded"
    env: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    shown_port: int = DEFAULT_PORTS["embedded"]

    @property
    def is_default(self) -> bool:
        return self == DEFAULT


DEFAULT = Layout()


@dataclass
class Command:
    text: str                 # as the block prints it (continuation lines kept)
    starts: Layout | None     # the layout this command starts, if it is a server's command line
    output: list[str] = field(default_factory=list)     # the lines the block shows it prints

    @property
    def shown(self) -> str | None:
        """The output the block shows, or None when it shows none."""
        return "\n".join(self.output).strip("\n") or None


def layout_of(command: str) -> Layout | None:
    """The layout a command line starts, or None when it is not one of the gateway's server commands."""
    match = SERVER.match(command.strip())
    if match is None:
        return None
    kind = "embedded" if match["entry"] == "run_server.py" else "cluster"
    env = tuple(tuple(pair.split("=", 1)) for pair in shlex.split(match["env"]))
    args, port = [], DEFAULT_PORTS[kind]
    words = shlex.split(match["args"])
    for index, word in enumerate(words):
        if word == "--port":
            continue
        if index and words[index - 1] == "--port":
            port = int(word)
        else:
            args.append(word)
    return Layout(kind, env, tuple(args), port)


def parse(source: str) -> list[Command]:
    """The commands of a bash or console block, each with the output it shows."""
    lines = source.splitlines()
    transcript = any(line.startswith("$ ") for line in lines)
    commands: list[Command] = []
    pending: str | None = None       # a command whose continuation lines are still coming
    collecting = False               # whether the `# ` lines that follow belong to the last command (bash)
    for line in lines:
        if pending is not None:
            pending += "\n" + line
        elif transcript and not line.startswith("$ "):
            if commands:
                commands[-1].output.append(line)
            continue
        elif not transcript and line.lstrip().startswith("#"):
            if collecting:
                commands[-1].output.append(line.lstrip()[1:].removeprefix(" "))
            continue
        elif not line.strip():
            collecting = False
            continue
        else:
            pending = line.removeprefix("$ ")
        if not complete(pending):
            continue
        commands.append(Command(pending, layout_of(pending)))
        pending, collecting = None, True
    return commands


def complete(command: str) -> bool:
    """Whether a command's text is whole: no `\\` continuation and no quote still open."""
    if command.endswith("\\"):
        return False
    try:
        shlex.split(command, comments=True)
    except ValueError:
        return False
    return True


def with_port(text: str, shown_port: int, port: int) -> str:
    """`text` with the shown port replaced by the real one in every loopback address."""
    return re.sub(rf"\b(127\.0\.0\.1|localhost):{shown_port}\b", rf"\g<1>:{port}", text)


def normalized(printed: str) -> str:
    """What a command printed, JSON lines re-written with spaces after `:` and `,` (as the READMEs show them;
    the gateway answers compact JSON), everything else as printed."""
    lines = []
    for line in printed.strip().splitlines():
        try:
            value = json.loads(line)
        except ValueError:
            lines.append(line)
        else:
            lines.append(json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else line)
    return "\n".join(lines)


def matches(shown: str, printed: str) -> bool:
    """Whether `printed` is what `shown` shows: `...` for any text, any run of whitespace for any other (or
    none), numbers with a fraction within one unit of their last shown digit, the rest exactly."""
    parts, expected = [], []
    for token in ELISION_OR_NUMBER.split(shown.strip()):
        if token == "...":
            parts.append(".*?")
        elif DECIMAL.fullmatch(token):
            parts.append(r"(-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)")
            expected.append(token)
        elif token.isspace():
            parts.append(r"\s*")
        elif token:
            parts.append(re.escape(token))
    found = re.fullmatch("".join(parts), normalized(printed), re.DOTALL)
    if found is None:
        return False
    return all(abs(float(got) - float(want)) <= 10 ** -len(want.split(".")[1]) + 1e-12
               for got, want in zip(found.groups(), expected, strict=True))
