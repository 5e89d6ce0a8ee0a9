"""The docs say what the code does, and keep saying it.

- docs/architecture.md's import diagram is the one ``scripts/import_graph.py`` computes
  from the source, and the layering rules it states hold;
- every ``edgefleet`` command and every controller API route is documented in
  ``docs/*.md`` or README.md (a command as ``edgefleet <group> <command>``, a route as
  ``METHOD /path``);
- the architecture page names every thread the agent and the controller start, every
  table of the controller's store, both stores' schema versions and every MQTT topic.
"""

from __future__ import annotations

import ast
import importlib.util
import itertools
import re
import sys
from pathlib import Path

import pytest
import typer
from _operators import offline_controller
from fastapi.routing import APIRoute

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURE = ROOT / "docs" / "architecture.md"
REGENERATE = "python3 scripts/import_graph.py --write"


def _load_import_graph():
    spec = importlib.util.spec_from_file_location("import_graph",
                                                  ROOT / "scripts" / "import_graph.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


import_graph = _load_import_graph()


def _docs_text() -> str:
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    return "\n".join(p.read_text() for p in pages)


@pytest.fixture(scope="module")
def graph():
    return import_graph.import_graph(ROOT)


# -- the import diagram and the layering -------------------------------------------------
def test_import_diagram_in_architecture_md_matches_the_code(graph):
    documented = import_graph.documented(ARCHITECTURE.read_text())
    assert documented is not None, (
        f"docs/architecture.md has lost its {import_graph.BEGIN} … {import_graph.END} "
        f"block; put the markers back and run `{REGENERATE}`")
    assert documented == import_graph.render(graph), (
        f"docs/architecture.md's import diagram differs from the code's imports: run "
        f"`{REGENERATE}` (and check the layering rules below it still read true)")


# what each package may import, as the architecture page states it
ALLOWED = {
    "contract": set(),
    "agent": {"contract"},
    "optimizer": {"contract"},
    "controller": {"contract", "optimizer"},
    "simulations": {"contract", "agent", "controller", "optimizer"},
    "cli": {"contract", "agent", "controller", "optimizer", "simulations"},
}


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_layering_allows(graph, package):
    extra = {b: files for b, files in graph[package].items() if b not in ALLOWED[package]}
    where = "; ".join(f"{b}: {', '.join(files)}" for b, files in extra.items())
    assert not extra, (f"{package} imports {sorted(extra)} ({where}), which the layering "
                       "in docs/architecture.md forbids")


def test_agent_never_imports_the_controller_and_only_cli_imports_simulations(graph):
    assert "controller" not in graph["agent"]
    importers = {a for a, targets in graph.items() if "simulations" in targets}
    assert importers == {"cli"}
    assert not any("cli" in targets for targets in graph.values())


def _optional(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside ``try: … except ImportError`` (optional imports)."""
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                isinstance(h.type, ast.Name) and h.type.id in ("ImportError",
                                                               "ModuleNotFoundError")
                for h in node.handlers):
            guarded.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return guarded


def test_contract_needs_only_the_standard_library_and_numpy():
    outside = set()
    for path in sorted((ROOT / "contract").rglob("*.py")):
        tree = ast.parse(path.read_bytes())
        optional = _optional(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level \
                else []
            for name in names:
                top = name.split(".")[0]
                if top not in sys.stdlib_module_names and top not in ("numpy", "edgefleet"):
                    outside.add(f"{path.relative_to(ROOT)}: {name}")
    assert not outside, ("the contract needs more than the standard library and numpy "
                         f"(an optional import sits in try/except ImportError): {outside}")


# -- commands and routes are documented --------------------------------------------------
_WORD = r"[a-z][a-z0-9-]*(?:\|[a-z][a-z0-9-]*)*"
_MENTION = re.compile(rf"\bedgefleet((?:\s+{_WORD}){{1,2}})")


def documented_commands(text: str) -> set[str]:
    """Command paths the text names as ``edgefleet group command`` (``a|b`` is both)."""
    found = set()
    for match in _MENTION.finditer(text):
        words = [w.split("|") for w in match.group(1).split()]
        for n in range(1, len(words) + 1):
            found.update(" ".join(p) for p in itertools.product(*words[:n]))
    return found


def cli_commands() -> list[str]:
    from edgefleet.cli import app

    def walk(command, path):
        subcommands = getattr(command, "commands", None)
        if subcommands is None:
            if not command.hidden:
                yield " ".join(path)
            return
        for name, sub in sorted(subcommands.items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


def test_the_command_walk_sees_every_group():
    commands = cli_commands()
    assert {"controller serve", "agent run", "deploy", "deployments watch", "keys init",
            "model optimize"} <= set(commands)
    assert documented_commands("edgefleet deployments pause|resume DEP, `edgefleet bench`") \
        >= {"deployments pause", "deployments resume", "bench"}


def test_every_cli_command_is_documented():
    mentioned = documented_commands(_docs_text())
    missing = [c for c in cli_commands() if c not in mentioned]
    assert not missing, ("commands without documentation (write `edgefleet <command>` "
                         "where docs/*.md or README.md explains it): "
                         + ", ".join(f"edgefleet {c}" for c in missing))


@pytest.fixture(scope="module")
def api_routes(tmp_path_factory):
    from edgefleet.controller import init_keys
    from edgefleet.controller.api import create_app

    root = tmp_path_factory.mktemp("docs-api")
    app = create_app(offline_controller(root, init_keys(root / "keys")))
    return sorted({(method, route.path_format) for route in app.routes
                   if isinstance(route, APIRoute) for method in route.methods
                   if method != "HEAD"})


def route_pattern(method: str, path: str) -> re.Pattern[str]:
    """``METHOD /path`` in prose: a ``{param}`` may have another name, or list values."""
    parts = re.split(r"(\{[^}]+\})", path)
    body = "".join(r"\{[^}\s]+\}" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(rf"\b{method}\s+`?{body}(?![\w/{{-])")


def test_route_pattern_reads_prose():
    assert route_pattern("POST", "/v1/deployments/{dep_id}/{action}").search(
        "`POST /v1/deployments/{id}/{pause|resume}`")
    assert route_pattern("GET", "/v1/devices/{device_id}/telemetry").search(
        "`GET /v1/devices/{id}/telemetry?limit=N`")
    assert not route_pattern("GET", "/ui/").search("`GET /ui/devices`")
    assert not route_pattern("GET", "/v1/models").search("`GET /v1/models/{name}/{version}`")


def test_every_api_route_is_documented(api_routes):
    assert ("GET", "/healthz") in api_routes and len(api_routes) > 30
    text = _docs_text()
    missing = [f"{m} {p}" for m, p in api_routes if not route_pattern(m, p).search(text)]
    assert not missing, ("API routes without documentation (write `METHOD /path` where "
                         "docs/*.md or README.md explains it; console pages in "
                         "docs/console.md): " + ", ".join(missing))


# -- the architecture page's facts --------------------------------------------------------
def _thread_names(folder: Path):
    """(file, name pattern) of every thread named where agent or controller start one."""
    for path in sorted(folder.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_bytes())):
            if not isinstance(node, ast.Call):
                continue
            func = node.func.attr if isinstance(node.func, ast.Attribute) else \
                getattr(node.func, "id", "")
            if func not in ("Thread", "ThreadPoolExecutor"):
                continue
            for kw in node.keywords:
                if kw.arg not in ("name", "thread_name_prefix"):
                    continue
                if isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                    yield path, re.escape(kw.value.value)
                elif isinstance(kw.value, ast.JoinedStr):  # f"{device_id}-jobs", "optimize-N"
                    yield path, "".join(
                        re.escape(v.value) if isinstance(v, ast.Constant)
                        else r"(?:\{[^}`]+\}|[\w.-]+)" for v in kw.value.values)


def test_architecture_md_names_every_thread_the_agent_and_controller_start():
    text = ARCHITECTURE.read_text()
    found = [(p, n) for folder in ("agent", "controller") for p, n in _thread_names(ROOT / folder)]
    assert len(found) >= 10
    missing = [f"{p.relative_to(ROOT)}: {n}" for p, n in found
               if not re.search(rf"`{n}`", text)]
    assert not missing, f"threads missing from docs/architecture.md's thread tables: {missing}"


def test_architecture_md_lists_the_controller_tables_and_schema_versions():
    from edgefleet.agent.telemetry import SCHEMA_VERSION
    from edgefleet.controller._tables import meta
    from edgefleet.controller.store import create_engine, schema_status

    text = ARCHITECTURE.read_text()
    storage = text[text.index("## Storage"):text.index("### Agent", text.index("## Storage"))]
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", storage, re.M))
    assert listed == set(meta.tables), (
        f"docs/architecture.md's table list is off: missing {set(meta.tables) - listed}, "
        f"no such table {listed - set(meta.tables)}")
    engine = create_engine("sqlite://")
    try:
        head = schema_status(engine)["head"]
    finally:
        engine.dispose()
    assert f"revision `{head}`" in storage
    assert f"schema version {SCHEMA_VERSION}" in text


def test_architecture_md_lists_every_mqtt_topic():
    from edgefleet.contract import BLOB_PREFIX, CTL_STATE, PREFIX, DeviceTopic

    text = ARCHITECTURE.read_text()
    suffixes = [v for k, v in vars(DeviceTopic).items() if k.isupper()]
    topics = [f"{PREFIX}/dev/{{id}}/{s}" for s in suffixes]
    topics += [CTL_STATE, f"{BLOB_PREFIX}/{{sha256}}/{{offset}}"]
    assert len(suffixes) >= 9
    assert [t for t in topics if f"`{t}`" not in text] == []


# -- links between the pages --------------------------------------------------------------
def _slug(heading: str) -> str:
    """A heading's anchor, as GitHub makes it."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _prose(path: Path) -> str:
    return re.sub(r"```.*?```", "", path.read_text(), flags=re.S)


def test_links_between_the_docs_reach_a_page_and_a_heading():
    pages = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
    broken = []
    for page in pages:
        for target in re.findall(r"\]\(([^)\s]+)\)", _prose(page)):
            if target.startswith(("http://", "https://", "mailto:")):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            if not dest.exists():
                broken.append(f"{page.name}: {target} (no such file)")
            elif anchor and dest.suffix == ".md" and anchor not in {
                    _slug(h) for h in re.findall(r"^#+\s+(.*)$", _prose(dest), re.M)}:
                broken.append(f"{page.name}: {target} (no such heading)")
    assert not broken, f"broken links: {broken}"
