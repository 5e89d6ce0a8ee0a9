#!/usr/bin/env python3
"""Run mypy on edgefleet's packages under their installed names.

The source folders are not named as they install (``contract/`` is
``edgefleet.contract``, and so on; see ``[tool.setuptools] package-dir`` in
pyproject.toml), and the editable install maps them with an import hook mypy does not
follow. This script builds an ``edgefleet/`` tree of symbolic links to the folders
(kept in ``.mypy_cache/``, so mypy's incremental cache stays valid between runs), runs
mypy on it with pyproject.toml's ``[tool.mypy]`` configuration, and prints the errors
with the paths of the source files in this repository.

Usage, from anywhere, with the Python that has the ``dev`` extra installed::

    python scripts/typecheck.py                 # contract and agent (held to strict)
    python scripts/typecheck.py controller cli  # other packages, by source folder name
    python scripts/typecheck.py agent -- --no-incremental   # after ``--``: mypy's own

The exit status is mypy's: 0 when no errors were found. ``tests/test_typing.py`` runs
the default and ``controller optimizer``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ["contract", "agent"]  # the packages pyproject.toml holds to strict
CACHE = ROOT / ".mypy_cache"
TREE = CACHE / "edgefleet-tree"


def package_folders(root: Path = ROOT) -> dict[str, str]:
    """Each top-level package under ``edgefleet.`` -> its source folder."""
    config = tomllib.loads((root / "pyproject.toml").read_text())
    mapping = config["tool"]["setuptools"]["package-dir"]
    return {name.removeprefix("edgefleet."): folder for name, folder in mapping.items()
            if name.count(".") == 1}


def _link(link: Path, target: Path) -> None:
    """``link`` -> ``target``, replaced atomically when it points elsewhere."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=target.is_dir())
    os.replace(tmp, link)


def build_tree(folders: dict[str, str], root: Path = ROOT, tree: Path = TREE) -> Path:
    """``tree/edgefleet/<package>`` -> each source folder; returns ``tree``."""
    top = tree / "edgefleet"
    top.mkdir(parents=True, exist_ok=True)
    _link(top / "__init__.py", root / "edgefleet" / "__init__.py")
    for package, folder in folders.items():
        _link(top / package, root / folder)
    return tree


def source_paths(output: str, folders: dict[str, str]) -> str:
    """mypy's ``edgefleet/<package>/…`` paths as this repository's ``<folder>/…``."""
    pattern = re.compile(r"^edgefleet/(" + "|".join(map(re.escape, folders)) + r")/",
                         re.MULTILINE)
    return pattern.sub(lambda m: f"{folders[m.group(1)]}/", output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("packages", nargs="*", metavar="PACKAGE",
                        help=f"source folders to check (default: {' '.join(DEFAULT)})")
    args, extra = argv_split(sys.argv[1:] if argv is None else argv)
    ns = parser.parse_args(args)
    folders = package_folders()
    unknown = [p for p in ns.packages if p not in folders]
    if unknown:
        parser.error(f"not a package: {', '.join(unknown)} (one of {', '.join(folders)})")
    tree = build_tree(folders)
    command = [sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
               "--cache-dir", str(CACHE)]
    for package in ns.packages or DEFAULT:
        command += ["-p", f"edgefleet.{package}"]
    proc = subprocess.run(command + extra, cwd=tree, capture_output=True, text=True)
    sys.stdout.write(source_paths(proc.stdout, folders))
    sys.stderr.write(source_paths(proc.stderr, folders))
    return proc.returncode


def argv_split(argv: list[str]) -> tuple[list[str], list[str]]:
    """The script's own arguments, and mypy's (those after ``--``)."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1:]
    return argv, []


if __name__ == "__main__":
    sys.exit(main())
