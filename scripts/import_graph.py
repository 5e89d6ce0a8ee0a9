#!/usr/bin/env python3
"""The import graph between edgefleet's packages, read from the source with ``ast``.

Each package's source folder (``contract/`` is ``edgefleet.contract``, and so on; see
``[tool.setuptools] package-dir`` in pyproject.toml) is parsed, every ``import`` and
``from … import`` in it is resolved (relative ones against the module's own package),
and an edge ``a --> b`` is drawn when a module of package ``a`` imports anything of
package ``b``. Imports are counted wherever they are written: at module level, inside
functions (the CLI's lazy imports) and under ``if TYPE_CHECKING:``. The top-level
``edgefleet`` package (it holds ``__version__``) is not one of the packages.

Usage, from the repository root (standard library only, nothing needs installing)::

    python3 scripts/import_graph.py            # print the diagram
    python3 scripts/import_graph.py --check    # exit 1 if docs/architecture.md differs
    python3 scripts/import_graph.py --write    # put the diagram into docs/architecture.md

``tests/test_docs.py`` fails when the diagram in docs/architecture.md is not this one.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name under ``edgefleet.`` -> source folder (pyproject.toml's package-dir)
PACKAGES = {"contract": "contract", "agent": "agent", "controller": "controller",
            "optimizer": "optimizer", "simulations": "simulations", "cli": "cli"}
DOC = Path("docs") / "architecture.md"
BEGIN = "<!-- import-graph:begin (scripts/import_graph.py --write) -->"
END = "<!-- import-graph:end -->"

Graph = dict[str, dict[str, list[str]]]  # package -> imported package -> importing files


def module_name(package: str, path: Path, folder: Path) -> tuple[list[str], bool]:
    """The dotted name of a source file as installed, and whether it is a package."""
    parts = ["edgefleet", package, *path.relative_to(folder).with_suffix("").parts]
    if parts[-1] == "__init__":
        return parts[:-1], True
    return parts, False


def imported_modules(tree: ast.AST, name: list[str], is_package: bool) -> Iterator[str]:
    """Every module a parsed file imports, as absolute dotted names."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name if is_package else name[:-1]
                base = base[:len(base) - (node.level - 1)]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            yield module
            # ``from edgefleet import agent`` names a package, not an attribute
            yield from (f"{module}.{alias.name}" for alias in node.names)


def import_graph(root: Path = ROOT) -> Graph:
    """Which package imports which, with the files that do it (sorted)."""
    graph: Graph = {p: {} for p in PACKAGES}
    for package, folder_name in PACKAGES.items():
        folder = root / folder_name
        for path in sorted(folder.rglob("*.py")):
            tree = ast.parse(path.read_bytes(), filename=str(path))
            name, is_package = module_name(package, path, folder)
            for module in imported_modules(tree, name, is_package):
                parts = module.split(".")
                if len(parts) < 2 or parts[0] != "edgefleet" or parts[1] not in PACKAGES:
                    continue
                if parts[1] == package:
                    continue
                files = graph[package].setdefault(parts[1], [])
                rel = path.relative_to(root).as_posix()
                if rel not in files:
                    files.append(rel)
    return graph


def edges(graph: Graph) -> list[tuple[str, str]]:
    """``(importer, imported)`` pairs, in the order of ``PACKAGES``."""
    order = list(PACKAGES)
    return sorted(((a, b) for a, targets in graph.items() for b in targets),
                  key=lambda e: (order.index(e[0]), order.index(e[1])))


def render(graph: Graph) -> str:
    """The diagram as it appears in docs/architecture.md: a Mermaid flowchart."""
    lines = ["```mermaid", "flowchart LR"]
    lines += [f"    {a} --> {b}" for a, b in edges(graph)]
    lines.append("```")
    return "\n".join(lines)


def documented(doc_text: str) -> str | None:
    """The diagram between the markers in the document (None: no markers)."""
    start, end = doc_text.find(BEGIN), doc_text.find(END)
    if start < 0 or end < start:
        return None
    return doc_text[start + len(BEGIN):end].strip()


def with_diagram(doc_text: str, diagram: str) -> str:
    """The document with its diagram replaced.

    Raises:
        ValueError: the document has no markers.
    """
    start, end = doc_text.find(BEGIN), doc_text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC} has no {BEGIN} … {END} block")
    return doc_text[:start + len(BEGIN)] + "\n" + diagram + "\n" + doc_text[end:]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true",
                      help=f"exit 1 when the diagram in {DOC} is not the generated one")
    mode.add_argument("--write", action="store_true", help=f"write the diagram into {DOC}")
    mode.add_argument("--files", action="store_true",
                      help="list the files behind each edge instead of the diagram")
    args = parser.parse_args(argv)
    graph = import_graph(ROOT)
    diagram = render(graph)
    doc = ROOT / DOC
    if args.files:
        for a, b in edges(graph):
            print(f"{a} --> {b}: {', '.join(graph[a][b])}")
        return 0
    if args.check:
        if documented(doc.read_text()) != diagram:
            print(f"{DOC}: the import diagram is out of date; run "
                  "`python3 scripts/import_graph.py --write`", file=sys.stderr)
            return 1
        return 0
    if args.write:
        doc.write_text(with_diagram(doc.read_text(), diagram))
        return 0
    print(diagram)
    return 0


if __name__ == "__main__":
    sys.exit(main())
