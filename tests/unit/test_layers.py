"""Imports point one way: the layers of the README's layout, and no folder importing another in a circle.

An AST check of every module of the project's packages, function-level and ``TYPE_CHECKING`` imports
included: a module may import its own layer and the layers before it, a top-level package only the
packages before it, and the folders' import graph has no cycle (a folder and the folders inside it count
as one). The layers are declared below by module path; a module outside every declared layer fails too,
so a new folder gets a place on purpose.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROOT: Final = Path(__file__).resolve().parents[2]

#: Top-level packages in dependency order: each may import only itself and those before it.
PACKAGES: Final = ("schemas", "sql", "pipeline", "consumers", "console", "devtools", "cli")

#: Layers in data-flow order: a module may import its own layer and the ones before it. A module
#: belongs to the layer of its longest matching prefix; ``pipeline`` alone is the package's
#: ``__init__`` (it chooses the compiled or interpreted engine), not a prefix of everything below it.
LAYERS: Final[tuple[tuple[str, tuple[str, ...]], ...]] = (
    ("event contract", ("schemas", "pipeline.contract")),
    ("pure rules and money rules", ("pipeline.rules", "pipeline.balance", "pipeline.orders")),
    ("infrastructure", ("pipeline.infra", "=pipeline")),
    ("storage and stream runtime", ("sql", "consumers.clickhouse", "pipeline.runtime")),
    ("processors and output consumers", ("pipeline.stream", "pipeline.compute", "consumers")),
    ("console, CLI and developer tooling", ("console", "cli", "devtools")),
)

#: Modules moved while another branch still imports them at their old paths: imports of them count at their
#: new place. Empty: every branch is merged.
PENDING: Final[dict[str, str]] = {}


@dataclass(frozen=True)
class Import:
    path: Path
    line: int
    importer: str
    target: str


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_package(module: str, root: Path) -> bool:
    return (root.joinpath(*module.split(".")) / "__init__.py").is_file()


def is_module(module: str, root: Path) -> bool:
    return is_package(module, root) or root.joinpath(*module.split(".")).with_suffix(".py").is_file()


def folder_of(module: str, root: Path) -> str:
    return module if is_package(module, root) else module.rpartition(".")[0]


def sources(root: Path, packages: Sequence[str]) -> Iterator[Path]:
    for package in packages:
        yield from sorted((root / package).rglob("*.py"))


def imports(root: Path, packages: Sequence[str]) -> Iterator[Import]:
    """Every import of a project module, at any depth of the file, resolved to the module it names."""
    for path in sources(root, packages):
        importer = module_name(path, root)
        own_package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = own_package.split(".")[: len(own_package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                targets = [f"{base}.{a.name}" if is_module(f"{base}.{a.name}", root) else base for a in node.names]
            else:
                continue
            for target in targets:
                if target.split(".")[0] in packages:
                    yield Import(path, node.lineno, importer, target)


def layer_of(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer)
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            exact = prefix.startswith("=")
            name = prefix.lstrip("=")
            matches = module == name or (not exact and module.startswith(name + "."))
            if matches and (best is None or len(name) > best[0]):
                best = (len(name), index)
    return None if best is None else best[1]


def layer_text(index: int) -> str:
    return f"layer {index + 1} ({LAYERS[index][0]})"


def violations(root: Path, packages: Sequence[str] = PACKAGES) -> list[str]:
    """What breaks the layering, one message per import, then one per folder cycle."""
    moved = dict(PENDING)
    problems: list[str] = []
    edges: dict[str, dict[str, Import]] = {}
    for path in sources(root, packages):
        if module_name(path, root) not in moved and layer_of(module_name(path, root)) is None:
            problems.append(f"{path.relative_to(root)}: {module_name(path, root)} is in no layer: declare it in LAYERS")
    for found in imports(root, packages):
        if found.importer in moved:
            continue  # a file another branch rewrites
        target = found.target
        for old, new in moved.items():
            if target == old or target.startswith(old + "."):
                target = new + target[len(old) :]
        where = f"{found.path.relative_to(root)}:{found.line}"
        importer_layer, target_layer = layer_of(found.importer), layer_of(target)
        if importer_layer is not None and target_layer is not None and target_layer > importer_layer:
            problems.append(
                f"{where}: {found.importer} ({layer_text(importer_layer)}) imports {target} "
                f"({layer_text(target_layer)}): a layer may import only itself and the layers before it"
            )
        own, their = found.importer.split(".")[0], target.split(".")[0]
        if packages.index(their) > packages.index(own):
            problems.append(
                f"{where}: package {own} imports {target} of package {their}, which comes after it "
                f"(order: {' -> '.join(packages)})"
            )
        source_folder, target_folder = folder_of(found.importer, root), folder_of(target, root)
        if not nested(source_folder, target_folder):
            edges.setdefault(source_folder, {}).setdefault(target_folder, found)
    problems.extend(cycle_messages(edges, root))
    return problems


def nested(a: str, b: str) -> bool:
    """One folder is the other or inside it: a package composing its own subpackage (the console's app and
    its routers) is one unit; the layers still order their modules."""
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def cycle_messages(edges: dict[str, dict[str, Import]], root: Path) -> list[str]:
    """One message per strongly connected group of folders, naming an import of each edge in it."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in edges.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    messages = []
    for group in groups:
        witnesses = [
            f"{imp.path.relative_to(root)}:{imp.line} ({a} -> {b})"
            for a in group
            for b, imp in sorted(edges.get(a, {}).items())
            if b in group
        ]
        shown = "; ".join(witnesses[:12]) + ("; ..." if len(witnesses) > 12 else "")
        messages.append(f"folders import each other in a circle: {', '.join(group)}; through {shown}")
    return messages


def test_imports_follow_the_layers_and_no_folder_cycle() -> None:
    problems = violations(ROOT)
    assert not problems, "\n".join(problems)


def write(root: Path, name: str, text: str = "") -> None:
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_the_check_names_a_backward_import_and_a_folder_cycle(tmp_path: Path) -> None:
    """The checker itself: a rule importing infrastructure, and two folders importing each other."""
    for package in ("pipeline", "pipeline/rules", "pipeline/balance", "pipeline/infra"):
        write(tmp_path, f"{package}/__init__.py")
    write(tmp_path, "pipeline/infra/logs.py")
    write(tmp_path, "pipeline/rules/meter.py", "def f():\n    from pipeline.infra import logs\n")
    write(tmp_path, "pipeline/rules/model.py", "import pipeline.balance.money\n")
    write(tmp_path, "pipeline/balance/money.py", "from pipeline.rules.model import X\n")

    problems = violations(tmp_path, ("pipeline",))

    assert any(
        p.startswith("pipeline/rules/meter.py:2: pipeline.rules.meter (layer 2")
        and "imports pipeline.infra.logs (layer 3 (infrastructure))" in p
        for p in problems
    ), problems
    assert any("in a circle: pipeline.balance, pipeline.rules" in p for p in problems), problems
