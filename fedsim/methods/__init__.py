"""Method registry.

A method is one module implementing ``fedsim.methods.base.Method``. The runtime only ever asks
this registry for a method by the name in the config; it never imports a method module itself.
Built-in methods are listed below by import path (so a source checkout works without an
install); third-party methods register under the ``fedsim.methods`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from fedsim.errors import ConfigError

BUILTIN_METHODS: dict[str, str] = {
    # federated clustering
    "afmcc": "fedsim.methods.afmcc:AFMCC",
    "fmcsc": "fedsim.methods.fmcsc:FMCSC",
    # centralised clustering methods, also runnable federated with modality-aware FedAvg
    "cmmc": "fedsim.methods.cmmc:CMMC",
    "msdib": "fedsim.methods.msdib:MSDIB",
    "gib": "fedsim.methods.gib:GIB",
    # supervised, missing modalities (task: classification)
    "fedrecon": "fedsim.methods.fedrecon:FedRecon",
    "fedavg": "fedsim.methods.supervised:FedAvg",
    "fedprox": "fedsim.methods.supervised:FedProx",
    "fedopt": "fedsim.methods.supervised:FedOpt",
}


def _targets() -> dict[str, str]:
    targets = dict(BUILTIN_METHODS)
    for ep in entry_points(group="fedsim.methods"):
        targets.setdefault(ep.name, ep.value)
    return targets


def method_names() -> list[str]:
    return sorted(_targets())


def get_method(name: str) -> type:
    targets = _targets()
    if name not in targets:
        raise ConfigError(f"unknown method '{name}'; available: {', '.join(sorted(targets))}")
    module_name, _, attr = targets[name].partition(":")
    return getattr(importlib.import_module(module_name), attr)
