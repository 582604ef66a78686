"""The method contract: what a federated clustering method implements (``Learner``).

Modelled on Flower's ``Client``/``Strategy`` split and pfl-research's algorithm objects: a method
says how to build a model, how one client aggregates what it downloaded, how it trains one local
round, how it embeds its samples for evaluation, and what a round costs on the virtual clock.
Everything else (actors, the parameter server, clocks, tracking, privacy) is the runtime's.

Methods run inside client actors on the client's private ``LocalData``; they never see another
client's samples, only other clients' parameters as flat float32 vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from abc import ABC, abstractmethod
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from pydantic import BaseModel


@dataclass
class LocalData:
    """One client's private shard, already on the client's device.

    ``views`` maps a modality index to its (n, d_v) tensor; only the client's own modalities are
    present. ``labels`` are kept for evaluation only and must not be used by unsupervised training
    (methods whose class sets ``supervised = True`` train on them). ``test`` is the client's
    held-out split for the classification task (same modalities), else None.
    """

    client_id: int
    views: dict[int, torch.Tensor]
    labels: np.ndarray
    indices: np.ndarray
    test: "LocalData | None" = None

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
    n_samples: int = 0  # the owner's training-set size (FedAvg weights)


@dataclass(frozen=True)
class RoundContext:
    """Where a local round sits in the run, for methods whose training has stages.

    ``round`` is the client's 1-based local round (0 for AFMCC Alg. 1 pretraining rounds, phase
    ``"pretrain"``); ``total_rounds`` is the run's rounds per client. A method whose
    paper trains in stages (CMMC's pretraining / contrastive / fine-tuning epochs) derives its
    stage from ``round`` alone, so a restarted actor resumes in the right stage.
    """

    round: int
    phase: str = "train"
    total_rounds: int = 1


class Learner(ABC):
    """The client-side half of a method: one instance per client, created inside the actor.

    Subclasses implement the abstract methods; every optional hook has a no-op default, so the
    runtime calls hooks, it never asks whether a method has one. What the core needs to know
    before Ray starts is declared as class attributes:

    - ``supervised``: the method trains on ``data.labels`` and answers ``predict``
      (``task: classification``); clustering methods leave it False.
    - ``run_defaults``: the run settings the method's paper needs, given under the user's config
      (AFMCC Alg. 1's pretraining, the FMCSC evaluation protocol, a stop rule). The core's own
      defaults are neutral: no pretraining, no evaluation protocol.
    - ``metric_names``: the final metrics ``selection_loss`` and ``extra_metrics`` report
      (``fnmatch`` patterns, e.g. ``coherence_*``); sweeps and the report keep exactly these.
    - ``evaluates_aggregate``: evaluate on what ``aggregate`` makes of every client's latest
      upload (FMCSC's per-pattern global models) instead of on the client's own upload.
    - ``max_peers`` (an instance attribute, it may come from the config): peer aggregation
      reads the client's own upload and at most this many others, the most recent
      (``Snapshot.round_inputs``); None reads every client's, O(U) models a round.
    """

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    supervised: ClassVar[bool] = False
    run_defaults: ClassVar[dict[str, Any]] = {}
    metric_names: ClassVar[tuple[str, ...]] = ()
    evaluates_aggregate: bool = False
    max_peers: int | None = None
    # a client that computes the server's model itself (``aggregate`` of a ServerAverage method
    # with a server optimiser) keeps its copy of the optimiser's state here
    server_state: Any = None

    @classmethod
    def validate(cls, experiment: Any) -> None:
        """Refuse a run this method cannot do, before Ray starts (raise ``ConfigError``).
        ``experiment`` is the validated ``fedsim.config.ExperimentConfig``; a subclass that
        extends this calls ``super().validate(experiment)``."""
        from fedsim.errors import ConfigError

        if experiment.task == "classification" and not cls.supervised:
            raise ConfigError(
                f"task=classification needs a supervised method; '{cls.name}' is a clustering method "
                f"(supervised methods: {', '.join(supervised_method_names())})"
            )
        if experiment.task == "clustering" and cls.supervised:
            raise ConfigError(f"'{cls.name}' is a supervised method; set task=classification")
        if experiment.task == "clustering" and experiment.evaluation is None:
            raise ConfigError(
                f"'{cls.name}' declares no evaluation protocol; set evaluation=fmcsc, global_kmeans or argmax"
            )
        selection = experiment.model_selection
        if selection.runs > 1 and selection.criterion == "loss" and "selection_loss" not in cls.metric_names:
            raise ConfigError(
                f"model_selection.criterion=loss needs a label-free selection_loss, which '{cls.name}' "
                "does not define; use model_selection.criterion=acc (uses labels) or runs=1"
            )

    # -- required ---------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self, seed: int) -> torch.nn.Module:
        """A freshly initialised model, deterministic in ``seed``."""

    @abstractmethod
    def make_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer: ...

    # -- the server-side half: how the uploads become a client's starting point ------------------
    def server_average(self, model: torch.nn.Module) -> ServerAverage | None:
        """The method's aggregation as a ``ServerAverage`` (FedAvg-like: one weighted average of
        the latest uploads, which the parameter server computes once per snapshot and every
        client downloads), or None for peer aggregation: each client downloads every peer's
        latest upload and combines them in ``aggregate`` (AFMCC's Eq. 6 weighs the peers by the
        client's own data). ``model`` has the client's architecture."""
        return None

    def start_from_average(self, model: torch.nn.Module, data: LocalData, averaged: torch.Tensor) -> torch.Tensor:
        """ServerAverage methods: the round's starting point from the server's average (already
        merged with the client's own parameters where the average has none). As is by default."""
        return averaged

    def aggregate(
        self, model: torch.nn.Module, data: LocalData, peers: list[PeerModel]
    ) -> tuple[torch.Tensor, dict[int, float]]:
        """Combine the downloaded models into this client's starting point for the round (peer
        aggregation; a ServerAverage method gets this from ``server_average`` computed here).

        ``model`` holds the client's own current parameters. Returns the flat parameters to load
        and the weight given to each peer (logged per round)."""
        average = self.server_average(model)
        if average is None:
            raise NotImplementedError(f"'{self.name}' defines neither aggregate nor server_average")
        # a client computing the server's model keeps its own copy of the server optimiser's state
        values, taken, weights, self.server_state = average.server_model(peers, self.server_state)
        return self.start_from_average(model, data, average.merge(flat_parameters(model), values, taken)), weights

    @abstractmethod
    def train_round(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext,
    ) -> dict[str, float]:
        """One round of local training; returns mean losses (``loss``: the mean total)."""

    @abstractmethod
    def embed(self, model: torch.nn.Module, data: LocalData) -> np.ndarray:
        """Features of the client's samples used for k-means evaluation."""

    @abstractmethod
    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Work units of one round, for the virtual clock (samples x forward-pass equivalents)."""

    # -- optional hooks (no-op defaults) ----------------------------------------------------------
    def check_run(self, rounds: int, client_modalities: list[tuple[int, ...]]) -> None:  # noqa: B027
        """Rules on the whole federation (raise ``ValueError``), checked in the driver before
        Ray starts: e.g. CMMC's stages against ``rounds``, FMCSC's view pattern per client.
        Nothing by default."""

    def soft_assignments(self, model: torch.nn.Module, data: LocalData) -> np.ndarray | None:
        """Soft cluster assignments (n, K), for ``evaluation: argmax``; None if the method has none."""
        return None

    def predict(self, model: torch.nn.Module, data: LocalData) -> np.ndarray:
        """(n, K) class probabilities (``task: classification``; ``supervised`` methods)."""
        raise NotImplementedError(f"'{self.name}' is not a supervised method: it has no predict")

    def selection_loss(self, model: torch.nn.Module, data: LocalData) -> float | None:
        """A label-free score of the model, lower is better (model selection); None: none.
        A method that returns one lists ``selection_loss`` in ``metric_names``."""
        return None

    def extra_metrics(self, model: torch.nn.Module, data: LocalData) -> dict[str, float]:
        """Metrics at the final evaluation, averaged over clients by sample count; their names
        match ``metric_names``."""
        return {}


def supervised_method_names() -> list[str]:
    """The registered methods that train on labels (imports them: for error messages only)."""
    from fedsim.methods import get_method, method_names

    return [name for name in method_names() if issubclass(cls := get_method(name), Learner) and cls.supervised]


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


def parameter_segments(model: torch.nn.Module) -> list[tuple[str, int, int]]:
    """(name, start, end) of every parameter in the flat vector, in ``parameters()`` order."""
    out, offset = [], 0
    for name, p in model.named_parameters():
        out.append((name, offset, offset + p.numel()))
        offset += p.numel()
    return out


@dataclass(frozen=True)
class ServerAverage:
    """FedAvg (McMahan et al. 2017) over the latest uploads, for models whose parameters may
    belong to modalities: the server-side aggregation of FedAvg, FedProx, FedOpt (with its server
    optimiser), CMMC, MSDIB, GIB and FedRecon. Computed once per snapshot by the parameter server (``average``); each client
    downloads the result and ``merge``s it with its own parameters, so a round moves two model
    buffers instead of one per client.

    ``segments``: (start, end, owners) per parameter in the flat vector; ``owners`` are the
    modalities a peer must hold for its copy to count (``()`` = every peer; None = not averaged,
    each client keeps its own value): a client without modality v never trains v's encoder, so
    its copy carries no information and must not dilute the others'. Weights are sample counts
    (``weighting="samples"``) or 1 per peer (``"uniform"``, FedRecon Alg. 1's 1/K), renormalised
    over the owning peers; a parameter no peer owns keeps each client's own value.
    """

    segments: tuple[tuple[int, int, tuple[int, ...] | None], ...]
    weighting: str = "samples"
    # FedOpt (Reddi et al. 2021): the server's optimiser turns the average into the next server
    # model; its state lives on the parameter server (``server_model``). None: plain FedAvg.
    server_optimizer: Any = None

    @classmethod
    def of(
        cls,
        model: torch.nn.Module,
        owners_of: Callable[[str], tuple[int, ...] | None],
        weighting: str = "samples",
        server_optimizer: Any = None,
    ) -> ServerAverage:
        if weighting not in ("samples", "uniform"):
            raise ValueError(f"weighting must be 'samples' or 'uniform', not {weighting!r}")
        segments = tuple((s, e, owners_of(name)) for name, s, e in parameter_segments(model))
        return cls(segments, weighting, server_optimizer)

    def server_model(self, peers: list[PeerModel], state: Any) -> tuple[torch.Tensor, list[int], dict[int, float], Any]:
        """``average``, then the server optimiser's step from the previous server model with its
        ``state`` (None before the first step: every entry then holds the common initial model
        x_0). Returns the values, the averaged segments, the weights and the new state."""
        values, taken, weights = self.average(peers)
        if self.server_optimizer is None:
            return values, taken, weights, None
        if state is None:
            x0 = peers[0].params.detach().clone()
            state = (x0, torch.zeros_like(x0), torch.zeros_like(x0))
        x_prev, m, v = state
        x, m, v = self.server_optimizer.step(x_prev, self.merge(x_prev, values, taken), m, v)
        return x, list(range(len(self.segments))), weights, (x, m, v)

    def average(self, peers: list[PeerModel]) -> tuple[torch.Tensor, list[int], dict[int, float]]:
        """The averaged values (zero where nothing was averaged), the indices of the segments
        that were averaged, and each peer's weight on the shared (``()``) parameters."""
        size = self.segments[-1][1] if self.segments else 0
        dtype = peers[0].params.dtype
        values = torch.zeros(size, dtype=dtype)
        if self.weighting == "samples":
            base = torch.tensor([float(max(p.n_samples, 1)) for p in peers], dtype=dtype)
        else:
            base = torch.ones(len(peers), dtype=dtype)
        taken: list[int] = []
        for index, (start, end, owners) in enumerate(self.segments):
            if owners is None:
                continue
            mask = torch.tensor([float(all(v in p.modalities for v in owners)) for p in peers], dtype=dtype)
            w = base * mask
            total = float(w.sum())
            if total == 0.0:
                continue
            seg = values[start:end]
            for peer, wi in zip(peers, (w / total).tolist()):
                if wi:
                    seg.add_(peer.params[start:end].to(seg.device), alpha=wi)
            taken.append(index)
        return values, taken, {p.client_id: float(w) for p, w in zip(peers, base / base.sum())}

    def merge(self, own: torch.Tensor, values: torch.Tensor, taken: list[int]) -> torch.Tensor:
        """The client's starting point: the averaged segments, its own values elsewhere."""
        out = own.clone()
        for index in taken:
            start, end, _ = self.segments[index]
            out[start:end] = values[start:end].to(out.device)
        return out


def average_by_owners(
    model: torch.nn.Module,
    peers: list[PeerModel],
    owners_of: Callable[[str], tuple[int, ...] | None],
    weighting: str = "samples",
) -> tuple[torch.Tensor, dict[int, float]]:
    """``ServerAverage`` computed on the client, over the downloaded models: the same values,
    by the same arithmetic, as the parameter server's (see ``ServerAverage``)."""
    average = ServerAverage.of(model, owners_of, weighting)
    values, taken, weights = average.average(peers)
    return average.merge(flat_parameters(model), values, taken), weights


class RoundLosses:
    """A round's gradient steps and the running means of its loss terms (what ``train_round``
    returns: each term's mean over the round's steps, and ``loss``, the mean total)."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = {}
        self.steps = 0

    def step(
        self,
        optimizer: torch.optim.Optimizer,
        total: torch.Tensor,
        terms: dict[str, torch.Tensor],
        clip_norm: float | None = None,
    ) -> None:
        """One optimiser step on ``total``, recorded with its ``terms``; with ``clip_norm`` the
        gradients' global norm is clipped to it first."""
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if clip_norm is not None:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        optimizer.step()
        for key, value in terms.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(value.detach())
        self.sums["loss"] = self.sums.get("loss", 0.0) + float(total.detach())
        self.steps += 1

    def means(self) -> dict[str, float]:
        return {k: v / max(self.steps, 1) for k, v in self.sums.items()}


def minibatches(n: int, batch_size: int, generator: torch.Generator, min_size: int = 1) -> list[torch.Tensor]:
    """One epoch: a seeded permutation of 0..n-1 cut into batches of ``batch_size``; a trailing
    batch smaller than ``min_size`` is merged into the one before (BatchNorm, and losses with an
    n(n-1) normaliser, need two samples)."""
    parts = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(parts) > 1 and parts[-1].numel() < min_size:
        last = parts.pop()
        parts[-1] = torch.cat([parts[-1], last])
    return parts
