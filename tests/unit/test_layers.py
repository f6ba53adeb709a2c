"""The layout, from the code's own imports: which package may import which, and no import circles.

Data flows one way. The core (`trackd/`) imports nothing else of the project; the edges import the
core, and the HTTP edges also the shared HTTP plumbing of `api/` (its deps and errors); `lab/` (the
simulator, demo, bench, eta-eval) imports the core and the edges but nothing imports it except the
CLI; `serve/` wires everything together. Every import counts, including those inside functions and
under `TYPE_CHECKING`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("trackd", "ingest", "stream", "notify", "api", "serve", "dashboards", "lab")
ALLOWED: dict[str, set[str]] = {
    "trackd": {"trackd"},
    "dashboards": {"trackd", "dashboards"},
    "api": {"trackd", "api"},
    "ingest": {"trackd", "api", "ingest"},
    "stream": {"trackd", "api", "stream"},
    "notify": {"trackd", "api", "dashboards", "notify"},
    "lab": {"trackd", "ingest", "stream", "notify", "api", "dashboards", "lab"},
    "serve": set(PACKAGES),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "vendor" not in path.parts:
                found[module_name(path, root)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules `name` imports (a `from pkg import mod` counts as `pkg.mod`)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def graph(root: Path) -> dict[str, set[str]]:
    mods = modules(root)
    known = set(mods)
    return {name: imports_of(name, path, known) for name, path in mods.items()}


def violations(g: dict[str, set[str]]) -> list[str]:
    bad = []
    for name, targets in sorted(g.items()):
        package = name.split(".")[0]
        for target in sorted(targets):
            if target.split(".")[0] not in ALLOWED[package]:
                bad.append(f"{name} imports {target}")
    return bad


def circles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_every_package_imports_only_the_layers_below_it() -> None:
    assert violations(graph(ROOT)) == []


def test_there_are_no_import_circles() -> None:
    assert circles(graph(ROOT)) == []


def test_no_tool_module_is_left_in_the_core() -> None:
    names = [p.stem for p in (ROOT / "trackd").glob("*.py")]
    tools = [
        n for n in names if n.startswith(("bench", "simulator", "carrier_", "feeder", "demo", "embedded", "etaeval"))
    ]
    assert tools == []


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, set[str]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    for package in PACKAGES:
        (tmp_path / package).mkdir(exist_ok=True)
        (tmp_path / package / "__init__.py").touch()
    return graph(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "from ingest import pipeline\n",
        "import lab.bench\n",
        "def f():\n    from serve.roles import run_roles\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from stream.hub import Hub\n",
    ],
)
def test_a_core_module_importing_an_edge_or_lab_is_caught(tmp_path: Path, text: str) -> None:
    g = _tree(
        tmp_path,
        {
            "trackd/model.py": text,
            "ingest/pipeline.py": "",
            "lab/bench.py": "",
            "serve/roles.py": "",
            "stream/hub.py": "",
        },
    )
    assert [v for v in violations(g) if v.startswith("trackd.model")] != []


def test_a_circle_is_caught(tmp_path: Path) -> None:
    g = _tree(
        tmp_path, {"stream/hub.py": "from stream import session\n", "stream/session.py": "from stream.hub import X\n"}
    )
    assert circles(g) == [["stream.hub", "stream.session"]]
