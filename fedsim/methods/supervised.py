"""The supervised multimodal task and its unimodal-FL baselines: FedAvg, FedProx, FedOpt (FedAdam).

Paper: ../shared/papers/002_a151183d84f2fadb.txt (FedRecon), Sec. 3 (problem formulation,
Eqs. 1-2), Sec. 4.2 (attention fusion, Eq. 6), Sec. 5.1 ("Baselines": FedAvg [45], FedProx [36]
and FedOpt [54], "all implemented with zero-filling for missing modalities following the
Fed-Multimodal [12] benchmark"; "Impact of Modality-Aware Fusion": the attention fusion is used
by every baseline too). PROTOCOLS.md, section "FedRecon".

The task model F (Sec. 3): one encoder E_m per modality (an MLP here: the datasets are feature
vectors, and the models must stay small enough for 10 clients on 2 CPU cores), the attention
fusion of Eq. 6 over the modality features (module-level :func:`attention_fusion`), and a
classifier head H; trained with cross-entropy on the client's labels (Eq. 1, L_task).

Zero-filling (FedMultimodal): a modality the client does not hold is fed to its encoder as an
all-zero input, for training and for the client's test split alike (the "dedicated" setting:
the test split misses the same modalities).

Aggregation. Every baseline averages the downloaded models with FedAvg's sample-count weights
(McMahan et al. 2017; ``weighting="uniform"`` for 1/K). An encoder E_m is averaged over the
peers that hold modality m (``encoder_aggregation="holders"``, default): a zero-filled client
only ever feeds E_m a constant, so its copy carries no information about modality m, and
FedRecon's Fig. 2b has clients submit "according to its modalities". ``"all"`` averages every
client's copy, as a plain FedAvg over the whole parameter vector would.

- FedAvg (McMahan et al. 2017): average, then ``local_epochs`` epochs of minibatch training.
- FedProx (Li et al. 2020, Eq. 2 there): local objective L_task + mu/2 ||w - w^t||^2 with w^t
  the round's aggregated starting point; ``mu`` is a config value (default 0.01).
- FedOpt = FedAdam (Reddi et al. 2021, Alg. 2 with ServerOpt = Adam, no bias correction):
  Delta_t = avg_k x_k - x_{t-1}; m_t = b1 m_{t-1} + (1-b1) Delta_t;
  v_t = b2 v_{t-1} + (1-b2) Delta_t^2; x_t = x_{t-1} + eta m_t / (sqrt(v_t) + tau).
  The server step runs on the parameter server (``ServerAverage.server_model`` with ``FedAdam``):
  once per snapshot, with the one state (x_{t-1}, m, v) the server keeps (and checkpoints), and
  every client starts its round from x_t. In ``mode: sync`` that is one step per round, FedAdam
  exactly; in ``async`` / ``virtual`` mode one step per round start, on the latest uploads.

Local optimiser: its state is cleared at the start of every round (Adam moments from the previous
round would refer to parameters that aggregation has just replaced); minibatches are drawn by the
runtime's seeded generator.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedsim.methods.blocks import mlp, modality_index
from fedsim.methods.base import (
    Learner,
    LocalData,
    RoundContext,
    RoundLosses,
    ServerAverage,
    minibatches,
)


class SupervisedConfig(BaseModel):
    """Task-model and local-training settings shared by FedAvg, FedProx, FedOpt and FedRecon.

    The paper's backbones (MobileNetV2 / MobileBERT / MFCC features + Conv/RNN) do not apply to
    our feature-vector datasets: the encoders are MLPs. Defaults are small on purpose."""

    model_config = ConfigDict(extra="forbid")

    hidden: list[int] = Field(default_factory=lambda: [256], description="encoder hidden widths")
    feature_dim: int = Field(64, ge=1, description="d_f, the feature size of every modality")
    attention_dim: int = Field(64, ge=1, description="rows of W in Eq. 6")
    head_hidden: int = Field(64, ge=1, description="hidden width of the classifier head H")
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0)
    momentum: float = Field(0.0, ge=0, lt=1, description="SGD only")
    batch_size: int = Field(32, ge=1)
    local_epochs: int = Field(1, ge=1, description="epochs of local task training per round")
    weighting: Literal["samples", "uniform"] = "samples"
    encoder_aggregation: Literal["holders", "all"] = "holders"


class FedProxConfig(SupervisedConfig):
    mu: float = Field(0.01, ge=0, description="proximal weight mu (Li et al. 2020)")


class FedOptConfig(SupervisedConfig):
    """FedAdam server optimiser (Reddi et al. 2021, Alg. 2): beta1 0.9 and beta2 0.99 as in their
    experiments; eta and tau are tuned per task there (0.01 and 1e-3 here)."""

    server_lr: float = Field(0.01, gt=0, description="eta, the server learning rate")
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0, description="adaptivity tau")


# ---------------------------------------------------------------------------------------------
# The task model


def attention_fusion(
    h: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    context: torch.Tensor,
    score_offset: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 6: u_i = tanh(W h_i + b), a = softmax_i(u_i^T c), fused = sum_i a_i h_i.

    ``h`` is (n, E, d_f): E feature vectors (entries) per sample; ``weight`` (d_a, d_f), ``bias``
    (d_a,), ``context`` c (d_a,). ``score_offset`` (E,) is added to the scores u_i^T c before the
    softmax: FedRecon lowers the weight of synthetic entries this way (log of a factor, Sec. 4.3).
    Returns the fused (n, d_f) features and the (n, E) attention weights."""
    u = torch.tanh(h @ weight.T + bias)
    scores = u @ context
    if score_offset is not None:
        scores = scores + score_offset
    a = torch.softmax(scores, dim=1)
    return (a.unsqueeze(-1) * h).sum(dim=1), a


class AttentionFusion(nn.Module):
    """The learnable W, b and c of Eq. 6."""

    def __init__(self, feature_dim: int, attention_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(feature_dim, attention_dim)  # W, b
        self.context = nn.Parameter(torch.randn(attention_dim) / attention_dim**0.5)  # c

    def forward(self, h: torch.Tensor, score_offset: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return attention_fusion(h, self.proj.weight, self.proj.bias, self.context, score_offset)


class MultimodalClassifier(nn.Module):
    """F = H(fusion(E_1(x_1), ..., E_M(x_M))) of Sec. 3, fusion = Eq. 6 over the entries."""

    def __init__(
        self,
        view_dims: tuple[int, ...],
        hidden: list[int],
        feature_dim: int,
        attention_dim: int,
        head_hidden: int,
        n_classes: int,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(mlp([dv, *hidden, feature_dim]) for dv in view_dims)
        self.fusion = AttentionFusion(feature_dim, attention_dim)
        self.head = mlp([feature_dim, head_hidden, n_classes])

    def encode(self, modality: int, x: torch.Tensor) -> torch.Tensor:
        return self.encoders[modality](x)

    def classify(
        self, entries: torch.Tensor, score_offset: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits, fused features) from the (n, E, d_f) entries."""
        fused, _ = self.fusion(entries, score_offset)
        return self.head(fused), fused


def zero_filled_entries(
    model: MultimodalClassifier, views: dict[int, torch.Tensor], view_dims: tuple[int, ...]
) -> torch.Tensor:
    """(n, M, d_f): E_m(x_m) for a held modality, E_m(0) for a missing one (FedMultimodal)."""
    ref = next(iter(views.values()))
    feats = []
    for m, dim in enumerate(view_dims):
        x = views[m] if m in views else ref.new_zeros(ref.shape[0], dim)
        feats.append(model.encode(m, x))
    return torch.stack(feats, dim=1)


# ---------------------------------------------------------------------------------------------
# Loss terms and the server step (module level: the tests check them by hand)


def task_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 1's L_task: the mean cross-entropy -1/n sum_i log softmax(logits_i)[y_i]."""
    return F.cross_entropy(logits, labels)


def proximal_term(params: list[torch.Tensor], anchor: list[torch.Tensor], mu: float) -> torch.Tensor:
    """FedProx: mu/2 * sum ||w - w^t||^2 over all parameter tensors."""
    return 0.5 * mu * sum(((p - a) ** 2).sum() for p, a in zip(params, anchor))


def fedadam_step(
    x_prev: torch.Tensor,
    average: torch.Tensor,
    m: torch.Tensor,
    v: torch.Tensor,
    lr: float,
    beta1: float,
    beta2: float,
    tau: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reddi et al. 2021, Alg. 2 (FedAdam): returns (x_t, m_t, v_t)."""
    delta = average - x_prev
    m = beta1 * m + (1 - beta1) * delta
    v = beta2 * v + (1 - beta2) * delta * delta
    return x_prev + lr * m / (v.sqrt() + tau), m, v


@dataclass(frozen=True)
class FedAdam:
    """FedOpt's server optimiser (``ServerAverage.server_optimizer``): ``fedadam_step``."""

    lr: float
    beta1: float
    beta2: float
    tau: float

    def step(
        self, x_prev: torch.Tensor, average: torch.Tensor, m: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return fedadam_step(x_prev, average, m, v, self.lr, self.beta1, self.beta2, self.tau)


def make_local_optimizer(groups: list[dict], cfg: SupervisedConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.Adam(groups, lr=cfg.lr)


def reset_optimizer(optimizer: torch.optim.Optimizer) -> None:
    """A fresh local optimiser for the round (the parameters it tracked were just replaced)."""
    optimizer.state.clear()


# ---------------------------------------------------------------------------------------------
# The baselines


class FedAvg(Learner):
    """FedAvg with zero-filled missing modalities and attention fusion (FedRecon Sec. 5.1)."""

    name: ClassVar[str] = "fedavg"
    Config: ClassVar[type[BaseModel]] = SupervisedConfig
    supervised: ClassVar[bool] = True

    def __init__(self, config: SupervisedConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_classes = n_clusters
        self.num_clients = num_clients

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> MultimodalClassifier:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            c = self.cfg
            return MultimodalClassifier(
                self.view_dims, list(c.hidden), c.feature_dim, c.attention_dim, c.head_hidden, self.n_classes
            )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_local_optimizer([{"params": list(model.parameters())}], self.cfg)

    # -- aggregation ---------------------------------------------------------------------------
    def owners_of(self, name: str) -> tuple[int, ...]:
        m = modality_index(name)
        return (m,) if m is not None and self.cfg.encoder_aggregation == "holders" else ()

    def server_average(self, model: nn.Module) -> ServerAverage | None:
        return ServerAverage.of(model, self.owners_of, self.cfg.weighting)

    # -- training ------------------------------------------------------------------------------
    def entries(self, model: MultimodalClassifier, views: dict[int, torch.Tensor]) -> torch.Tensor:
        return zero_filled_entries(model, views, self.view_dims)

    def extra_loss(self, model: nn.Module, anchor: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Terms added to L_task (FedProx's proximal term); none for FedAvg."""
        return {}

    def train_round(
        self,
        model: MultimodalClassifier,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext | None = None,
    ) -> dict[str, float]:
        model.train()
        reset_optimizer(optimizer)
        anchor = [p.detach().clone() for p in model.parameters()]  # w^t, the aggregated start
        labels = torch.as_tensor(data.labels, dtype=torch.long, device=next(model.parameters()).device)
        losses = RoundLosses()
        for _ in range(self.cfg.local_epochs):
            for idx in minibatches(data.n_samples, self.cfg.batch_size, generator):
                idx = idx.to(labels.device)
                logits, _ = model.classify(self.entries(model, {m: x[idx] for m, x in data.views.items()}))
                terms = {"loss_task": task_loss(logits, labels[idx]), **self.extra_loss(model, anchor)}
                total = sum(terms.values())
                losses.step(optimizer, total, terms)
        return losses.means()

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: MultimodalClassifier, data: LocalData) -> np.ndarray:
        """Class probabilities (n, K) on ``data`` (the runtime passes the client's test split)."""
        model.eval()
        logits, _ = model.classify(self.entries(model, data.views))
        return torch.softmax(logits, dim=1).cpu().numpy()

    @torch.no_grad()
    def embed(self, model: MultimodalClassifier, data: LocalData) -> np.ndarray:
        """The fused features (Eq. 6 output) of the client's samples."""
        model.eval()
        return model.classify(self.entries(model, data.views))[1].cpu().numpy()

    def soft_assignments(self, model: MultimodalClassifier, data: LocalData) -> np.ndarray:
        return self.predict(model, data)

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """3 forward-pass equivalents (forward + backward) per sample and local epoch."""
        return float(3 * data.n_samples * self.cfg.local_epochs)


class FedProx(FedAvg):
    """FedProx (Li et al. 2020): FedAvg plus the proximal term mu/2 ||w - w^t||^2."""

    name: ClassVar[str] = "fedprox"
    Config: ClassVar[type[BaseModel]] = FedProxConfig

    def extra_loss(self, model: nn.Module, anchor: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"loss_prox": proximal_term(list(model.parameters()), anchor, self.cfg.mu)}


class FedOpt(FedAvg):
    """FedOpt with the Adam server optimiser (FedAdam, Reddi et al. 2021) on the parameter
    server (see the module docstring)."""

    name: ClassVar[str] = "fedopt"
    Config: ClassVar[type[BaseModel]] = FedOptConfig

    def server_average(self, model: nn.Module) -> ServerAverage:
        """FedAvg's average, then FedAdam's step on the parameter server, whose state (x, m, v)
        stays there: one optimiser for the federation, not a copy per client."""
        c = self.cfg
        return ServerAverage.of(model, self.owners_of, c.weighting, FedAdam(c.server_lr, c.beta1, c.beta2, c.tau))
