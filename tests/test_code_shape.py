"""The standing rules of the code (DESIGN.md): short functions, short modules, no sys.path edits, no import cycles."""
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
    assert {"run_server.py", "classify_worker.py", "image_gateway/protocol/queue.py",
            "image_gateway/web/predict.py"} <= names


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


def product_imports() -> dict[str, set[str]]:
    """image_gateway's modules -> the image_gateway modules each imports (anywhere in its body)."""
    package = ROOT / "image_gateway"
    modules = {".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
               for path in package.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found = [f"{node.module}.{alias.name}" for alias in node.names]
                targets |= {t if t in modules else node.module for t in found}
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan's algorithm)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while not group or group[-1] != node:
                group.append(stack.pop())
                on_stack.discard(group[-1])
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_walk_sees_the_package():
    graph = product_imports()
    assert "image_gateway.worker.loop" in graph["image_gateway.worker.host"]
    assert "image_gateway.web.app" in graph["image_gateway.embedded"]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]     # the check can fail


def test_no_import_cycles_in_the_product():
    assert cycles(product_imports()) == []
