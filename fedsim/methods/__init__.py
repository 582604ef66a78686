"""Method registry: the ``fedsim.methods`` entry-point group, and nothing else.

A method is one module with a ``fedsim.methods.base.Learner`` subclass, registered by an entry
point (pyproject.toml ``[project.entry-points."fedsim.methods"]``; a third-party package
declares its own). The runtime only ever asks this registry for a method by the name in the
config; it never imports a method module itself. Entry points are read from the installed
metadata: a source checkout needs ``pip install -e .`` (``make install``) once, and again when
an entry is added.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from functools import lru_cache
from importlib.metadata import entry_points
from pathlib import Path

from fedsim.errors import ConfigError


def _targets() -> dict[str, str]:
    """name -> "module:attribute"."""
    targets: dict[str, str] = {}
    for ep in entry_points(group="fedsim.methods"):
        targets.setdefault(ep.name, ep.value)
    return targets


def method_names() -> list[str]:
    return sorted(_targets())


def get_method(name: str) -> type:
    targets = _targets()
    if not targets:
        raise ConfigError(
            "no methods are registered: fedsim's entry points are missing; install it with `make install` "
            "(pip install -e .)"
        )
    if name not in targets:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(targets))}")
    module_name, _, attr = targets[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)


def config_keys(name: str) -> frozenset[str] | None:
    """The keys of method ``name``'s ``Config``, read from its module's source without importing
    it (a method module imports torch: seconds), so a misspelt ``afmcc.lrr`` is refused at once.

    None when the source does not say plainly (a third-party method, a ``Config`` built at
    runtime, a base class from outside fedsim): the caller then imports the method and lets its
    pydantic model judge. tests/test_first_contact.py checks the answer against every built-in
    method's real model."""
    target = _targets().get(name)
    if target is None:
        return None
    module, _, attr = target.partition(":")
    try:
        return _config_keys(module, attr)
    except (OSError, SyntaxError, ValueError, ImportError):
        return None


@lru_cache(maxsize=None)
def _config_keys(module: str, attr: str) -> frozenset[str] | None:
    tree = _module_tree(module)
    if tree is None:
        return None
    method = _class(tree, attr)
    if method is None:
        return None
    config = None
    for node in method.body:
        targets = (
            [node.target] if isinstance(node, ast.AnnAssign) else node.targets if isinstance(node, ast.Assign) else []
        )
        if any(isinstance(t, ast.Name) and t.id == "Config" for t in targets) and isinstance(node.value, ast.Name):
            config = node.value.id
    if config is None:
        return None
    return _model_fields(module, tree, config, depth=0)


def _module_tree(module: str) -> ast.Module | None:
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None or not spec.origin.endswith(".py"):
        return None
    return ast.parse(Path(spec.origin).read_text(encoding="utf-8"))


def _class(tree: ast.Module, name: str) -> ast.ClassDef | None:
    return next((n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == name), None)


def _model_fields(module: str, tree: ast.Module, name: str, depth: int) -> frozenset[str] | None:
    """Field names of pydantic model ``name`` (defined in ``tree``, or imported into it from
    another fedsim module), its fedsim base classes' included."""
    if depth > 8:
        return None
    cls = _class(tree, name)
    if cls is None:  # imported: follow ``from fedsim.x import name``
        for node in tree.body:
            if (
                isinstance(node, ast.ImportFrom)
                and node.module
                and node.module.startswith("fedsim.")
                and node.level == 0
            ):
                if any(alias.name == name and alias.asname is None for alias in node.names):
                    other = _module_tree(node.module)
                    return None if other is None else _model_fields(node.module, other, name, depth + 1)
        return None
    fields: set[str] = set()
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id == "BaseModel":
            continue
        if not isinstance(base, ast.Name):
            return None
        inherited = _model_fields(module, tree, base.id, depth + 1)
        if inherited is None:
            return None
        fields |= inherited
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            annotation = ast.unparse(node.annotation)
            if node.target.id.startswith("_") or annotation.startswith(("ClassVar", "typing.ClassVar")):
                continue
            fields.add(node.target.id)
    return frozenset(fields)
