"""The method protocol: what a federated clustering method implements.

Modelled on Flower's ``Client``/``Strategy`` split and pfl-research's algorithm objects: a method
says how to build a model, how one client aggregates what it downloaded, how it trains one local
round, how it embeds its samples for evaluation, and what a round costs on the virtual clock.
Everything else (actors, the parameter server, clocks, tracking, privacy) is the runtime's.

Methods run inside client actors on the client's private ``LocalData``; they never see another
client's samples, only other clients' parameters as flat float32 vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import numpy as np
import torch
from pydantic import BaseModel


@dataclass
class LocalData:
    """One client's private shard, already on the client's device.

    ``views`` maps a modality index to its (n, d_v) tensor; only the client's own modalities are
    present. ``labels`` are kept for evaluation only and must not be used by unsupervised training.
    """

    client_id: int
    views: dict[int, torch.Tensor]
    labels: np.ndarray
    indices: np.ndarray

    @property
    def modalities(self) -> tuple[int, ...]:
        return tuple(sorted(self.views))

    @property
    def n_samples(self) -> int:
        return int(self.labels.shape[0])


@dataclass(frozen=True)
class PeerModel:
    """A model downloaded from the parameter server: its owner, version and flat parameters."""

    client_id: int
    version: int
    modalities: tuple[int, ...]
    params: torch.Tensor  # flat float32


class Method(Protocol):
    """A federated clustering method. One instance per client, created inside the actor."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]

    def __init__(self, config: BaseModel, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None: ...

    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised model, deterministic in ``seed``."""

    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    def aggregate(self, model: torch.nn.Module, data: LocalData, peers: list[PeerModel]) -> tuple[torch.Tensor, dict[int, float]]:
        """Combine the downloaded models into this client's starting point for the round.

        ``model`` holds the client's own current parameters. Returns the flat parameters to load
        and the weight given to each peer (logged per round)."""

    def train_round(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, data: LocalData, generator: torch.Generator) -> dict[str, float]:
        """One round of local training; returns mean losses."""

    def embed(self, model: torch.nn.Module, data: LocalData) -> np.ndarray:
        """Features of the client's samples used for k-means evaluation."""

    def soft_assignments(self, model: torch.nn.Module, data: LocalData) -> np.ndarray | None:
        """Soft cluster assignments (n, K) if the method has them, for argmax evaluation."""

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Work units of one round, for the virtual clock (samples x forward-pass equivalents)."""


def flat_parameters(model: torch.nn.Module) -> torch.Tensor:
    """All parameters as one contiguous float32 vector (the wire format of the runtime)."""
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().float().contiguous()


def load_flat_parameters(model: torch.nn.Module, flat: torch.Tensor) -> None:
    with torch.no_grad():
        torch.nn.utils.vector_to_parameters(flat.to(next(model.parameters()).device), model.parameters())


def unflatten(model: torch.nn.Module, flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Views into ``flat`` shaped like ``model``'s parameters, for ``torch.func.functional_call``
    (evaluating a downloaded model without copying it into a module)."""
    out: dict[str, torch.Tensor] = {}
    offset = 0
    for name, p in model.named_parameters():
        n = p.numel()
        out[name] = flat[offset : offset + n].view_as(p)
        offset += n
    if offset != flat.numel():
        raise ValueError(f"flat parameter vector has {flat.numel()} values, model needs {offset}")
    return out
