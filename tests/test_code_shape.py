"""The standing rules of the code (DESIGN.md): short functions, short modules, no sys.path edits."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAX_FUNCTION_LINES = 60
MAX_MODULE_LINES = 400


def source_files() -> list[Path]:
    skip = {".venv", "tests", ".git", "node_modules"}
    return [path for path in ROOT.rglob("*.py") if not skip & set(path.relative_to(ROOT).parts)]


def test_the_walk_finds_the_project():
    names = {path.relative_to(ROOT).as_posix() for path in source_files()}
    assert {"run_server.py", "classify_worker.py", "protocol/queue.py", "web/predict.py"} <= names


def test_no_module_outside_tests_is_over_400_lines():
    lengths = {str(path.relative_to(ROOT)): len(path.read_text().splitlines()) for path in source_files()}
    long = {name: lines for name, lines in lengths.items() if lines > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_outside_tests_is_over_60_lines():
    long = {}
    for path in source_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.name}"] = length
    assert long == {}


def test_nothing_edits_sys_path():
    everything = [p for p in ROOT.rglob("*.py") if ".venv" not in p.parts and p.name != "test_code_shape.py"]
    assert [str(p.relative_to(ROOT)) for p in everything if "sys.path.insert" in p.read_text()
            or "sys.path.append" in p.read_text()] == []
