"""Building blocks of the information-bottleneck clustering methods MSDIB and GIB.

Both are read from MSDIB's released code (ShizheHu/AAAI25_Code_MSDIB; its history survives in
the fork permutation248/aaai_ib, commit a1e4dad: src/models/contrastive_mvc.py, src/lib/loss.py,
src/lib/mutual_information.py, src/models/model.py, src/config/defaults.py). GIB (same group) has
no public code and uses these same pieces (fedsim/methods/gib.py says where).

- ``VariationalEncoder``: Linear -> BatchNorm1d -> ReLU at every layer, the last included
  (Input-512-512-256), so the output is non-negative; it is split into mu (the first ``mu_dim``
  = 128 coordinates) and sigma = softplus(rest) + 1e-7 (``split_gaussian``).
- ``WeightedFusion``: sum_v softmax(w)_v h_v over the full encoder outputs, w initialised to 1/V.
- The DDC head is ``fedsim.methods.ddc.DDCHead(..., bn_before_relu=True)``, Linear -> BN -> ReLU
  -> Linear -> softmax as in the code, one head shared by every view and the fused output.
- ``joint_mi``: the IIC joint-probability mutual information on raw non-negative rows (no
  softmax), entries below float64 eps replaced by eps as the code does.
- ``JSDCritic`` / ``jsd_mi``: the Jensen-Shannon lower bound of the code's MIEstimator (MLP
  2d-1024-1024-1 with BatchNorm; negatives by rolling the first argument one place in the batch).
  In the code the critic is a module-level global outside the network: the optimiser never sees
  it, so it stays at its random initialisation; here it is a frozen submodule.
- ``sinkhorn_labels`` / ``balanced_ce``: the code's UD_constraint_f, Sinkhorn balancing of the
  probabilities to the 10th power (at most 150 iterations, tolerance 1e-2 checked every 10), argmax;
  the cross-entropy takes softmax(head probabilities) as its logits, as the code does
  (``softmax_p``), or is the plain -log p of the head (``log_p``, MSDIB's tuned reading).
- ``batch_statistics``: BatchNorm with batch statistics at evaluation (the runtime ships
  parameters, never buffers).
- ``step_lr`` (StepLR x0.1 at epoch 50, derived from the round) and ``BestCheckpoint`` (keep the
  epoch with the lowest DDC1, the code's ModelSaver with best_loss_term = "ddc_1").
- ``IBMethod``: what the two methods share on the method protocol: the network, Adam, the
  per-view-owner average, the epoch loop (StepLR, seeded drop-last batches, one noise draw per
  batch, gradient clipping, best-DDC1 selection) and the evaluation on the fused outputs. A method
  adds its objective (``batch_loss``) and, where it needs one, a per-epoch preparation
  (``prepare_round``: GIB's granular balls).
"""

from __future__ import annotations

import itertools
import sys
from contextlib import contextmanager
from typing import Any, Callable, ClassVar, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedsim.methods.blocks import reparameterise
from fedsim.methods.base import (
    Learner,
    LocalData,
    RoundContext,
    RoundLosses,
    ServerAverage,
    flat_parameters,
    load_flat_parameters,
)

MI_EPS = sys.float_info.epsilon  # the code's EPS (float64 eps, whatever the working precision)
SIGMA_FLOOR = 1e-7


def he_init(module: nn.Module) -> None:
    """Kaiming-normal weights for every Linear (the code's helpers.he_init_weights); biases keep
    PyTorch's default."""
    if isinstance(module, nn.Linear):
        nn.init.kaiming_normal_(module.weight)


class VariationalEncoder(nn.Module):
    """Linear -> BatchNorm1d -> ReLU for every width, the last included."""

    def __init__(self, in_dim: int, widths: list[int]) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise([in_dim, *widths]):
            layers += [nn.Linear(a, b), nn.BatchNorm1d(b), nn.ReLU()]
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def split_gaussian(h: torch.Tensor, mu_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, sigma): the first ``mu_dim`` coordinates, softplus of the rest + 1e-7."""
    return h[:, :mu_dim], F.softplus(h[:, mu_dim:]) + SIGMA_FLOOR


class WeightedFusion(nn.Module):
    """sum_v softmax(w)_v h_v, w initialised to 1/V (so the weights start uniform)."""

    def __init__(self, n_views: int) -> None:
        super().__init__()
        self.weights = nn.Parameter(torch.full((n_views,), 1.0 / n_views))

    def normalised(self, views: tuple[int, ...]) -> torch.Tensor:
        """softmax over the logits of ``views`` (a client holding a subset renormalises over it)."""
        return torch.softmax(self.weights[list(views)], dim=0)

    def forward(self, h: dict[int, torch.Tensor]) -> torch.Tensor:
        views = tuple(sorted(h))
        w = self.normalised(views)
        return sum(w[i] * h[v] for i, v in enumerate(views))  # type: ignore[return-value]


def joint_probability(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """P = sum_n a_n b_n^T, symmetrised (P + P^T) / 2, normalised to sum 1 (rows of a, b: d each)."""
    p = a.T @ b
    p = (p + p.T) / 2.0
    return p / p.sum()


def joint_mi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IIC mutual information sum_kl P_kl log(P_kl / (p_k p_l)) of ``joint_probability``; the
    marginals are taken before entries below ``MI_EPS`` are replaced by it (no log 0)."""
    p = joint_probability(a, b)
    row = p.sum(dim=1, keepdim=True).clamp_min(MI_EPS)
    col = p.sum(dim=0, keepdim=True).clamp_min(MI_EPS)
    p = p.clamp_min(MI_EPS)
    return (p * (torch.log(p) - torch.log(row) - torch.log(col))).sum()


def mean_pairwise(values: dict[int, torch.Tensor], fn) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """The mean of fn(values[i], values[j]) over the pairs i < j (0 with one entry)."""
    pairs = list(itertools.combinations(sorted(values), 2))
    if not pairs:
        return next(iter(values.values())).new_zeros(())
    return sum(fn(values[i], values[j]) for i, j in pairs) / len(pairs)  # type: ignore[return-value]


class JSDCritic(nn.Module):
    """T(x, y): MLP (dx + dy) -> 1024 -> 1024 -> 1 with BatchNorm and ReLU (the code's MIEstimator)."""

    def __init__(self, dx: int, dy: int, width: int = 1024) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dx + dy, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, width),
            nn.BatchNorm1d(width),
            nn.ReLU(),
            nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([x, y], dim=1))


def jsd_mi(critic: JSDCritic, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Jensen-Shannon MI bound E_pos[-softplus(-T)] - E_neg[softplus(T)]; the negatives pair
    ``x`` rolled by one row with ``y``."""
    pos = critic(x, y)
    neg = critic(torch.roll(x, 1, dims=0), y)
    return -F.softplus(-pos).mean() - F.softplus(neg).mean()


@torch.no_grad()
def sinkhorn_labels(
    probabilities: torch.Tensor, power: float = 10.0, max_iterations: int = 150, tolerance: float = 1e-2
) -> torch.Tensor:
    """Balanced hard pseudo-labels: Sinkhorn-Knopp scaling of P^power (n x K) towards row sums
    1/n and column sums 1/K, then argmax per sample. In float64 on the CPU."""
    q = probabilities.detach().double().cpu().T.pow(power)  # (K, n)
    k, n = q.shape
    r = torch.full((k, 1), 1.0 / k, dtype=torch.float64)
    c = torch.full((n, 1), 1.0 / n, dtype=torch.float64)
    err, count = float("inf"), 0
    while err > tolerance and count < max_iterations:
        r = (1.0 / k) / (q @ c)
        c_new = (1.0 / n) / (r.T @ q).T
        if count % 10 == 0:
            err = float(torch.nansum(torch.abs(c / c_new - 1.0)))
        c = c_new
        count += 1
    balanced = q * c.T * r
    balanced = torch.nan_to_num(balanced, nan=-1.0)
    return balanced.argmax(dim=0).to(probabilities.device)


def balanced_ce(assignments: torch.Tensor, logits: str = "softmax_p") -> torch.Tensor:
    """Cross-entropy of one head's probabilities against their Sinkhorn-balanced labels.

    ``softmax_p``: the code's loss_op term: softmax(p) is taken as the logits and balanced, so the
    logits live in [0, 1], the cross-entropy stays near log K and its gradient is small.
    ``log_p``: the plain cross-entropy -log p_label of the head, against the Sinkhorn labels of p
    itself (the self-labelling objective Eq. 12's "sum q = M/|C|" describes)."""
    if logits == "log_p":
        return F.nll_loss(torch.log(assignments.clamp_min(MI_EPS)), sinkhorn_labels(assignments))
    scores = torch.softmax(assignments, dim=1)
    return F.cross_entropy(scores, sinkhorn_labels(scores))


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the statistics of the batch it sees and updates nothing (train
    mode without tracking); the runtime never ships running statistics to an evaluated model."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = tracking


@torch.no_grad()
def shard_output(model: nn.Module, views: dict[int, torch.Tensor], key: str) -> np.ndarray:
    """One output of the network (``h_fused``, ``y_fused``) on a whole shard's deterministic
    outputs, BatchNorm with the shard's statistics: what MSDIB and GIB embed and assign."""
    model.eval()
    with batch_statistics(model):
        return model(views)[key].cpu().numpy()


def step_lr(base: float, round_: int, step: int | None, gamma: float) -> float:
    """StepLR as the code steps it: epoch e (0-based = round - 1) trains at base * gamma^(e // step)."""
    if not step:
        return base
    return base * gamma ** (max(round_ - 1, 0) // step)


def drop_last_batches(n: int, batch_size: int, generator: torch.Generator) -> list[torch.Tensor]:
    """A seeded shuffle cut into batches of ``batch_size``, the last partial one dropped (the
    code's DataLoader(drop_last=True)); all n samples as one batch when n < batch_size."""
    parts = list(torch.randperm(n, generator=generator).split(batch_size))
    if len(parts) > 1 and parts[-1].numel() < batch_size:
        parts.pop()
    return parts


class BestCheckpoint:
    """Within one run, the parameters of the epoch with the lowest label-free score (the code's
    ModelSaver with best_loss_term = "ddc_1", checked after every epoch)."""

    def __init__(self) -> None:
        self.score = float("inf")
        self.round = 0
        self.params: torch.Tensor | None = None

    def offer(self, score: float, round_: int, params: torch.Tensor) -> None:
        if np.isfinite(score) and score < self.score:
            self.score, self.round, self.params = score, round_, params.detach().clone()

    def track(self, model: nn.Module, score: float, round_: int, total_rounds: int) -> dict[str, float]:
        """Offer this epoch (a new run starts at round 1); after the last round, load the best
        epoch's parameters into ``model`` (what the client then uploads and is evaluated on)."""
        if round_ <= 1:
            self.score, self.round, self.params = float("inf"), 0, None
        self.offer(score, round_, flat_parameters(model))
        if round_ >= total_rounds and self.params is not None:
            load_flat_parameters(model, self.params)
        return {"epoch_ddc1": score, "best_round": float(self.round)}


class IBNetwork(nn.Module):
    """Per view a ``VariationalEncoder``, ``WeightedFusion`` of their outputs, one DDC head shared
    by the views and the fused output, and the frozen ``JSDCritic`` on (mu_dim, mu_dim) samples.
    He-initialised Linear weights, except the critic's (PyTorch's default, as in the code)."""

    def __init__(
        self, view_dims: tuple[int, ...], widths: list[int], mu_dim: int, n_clusters: int, head_hidden: int
    ) -> None:
        from fedsim.methods.ddc import DDCHead

        super().__init__()
        self.encoders = nn.ModuleList(VariationalEncoder(d, widths) for d in view_dims)
        self.fusion = WeightedFusion(len(view_dims))
        self.head = DDCHead(widths[-1], n_clusters, head_hidden, bn_before_relu=True)
        self.apply(he_init)
        self.critic = JSDCritic(mu_dim, mu_dim)
        self.critic.requires_grad_(False)

    def forward(self, x: dict[int, torch.Tensor]) -> dict[str, Any]:
        """H_v, H_F, Y_v, Y_F and the fused head's hidden layer (the DDC kernel's input)."""
        h = {v: self.encoders[v](x[v]) for v in sorted(x)}
        h_fused = self.fusion(h)
        y_fused, hidden = self.head(h_fused)
        y = {v: self.head(h[v])[0] for v in h}
        return {"h": h, "h_fused": h_fused, "y": y, "y_fused": y_fused, "hidden": hidden}

    @staticmethod
    def owners_of(name: str) -> tuple[int, ...] | None:
        """For ``ServerAverage``: view v's encoder belongs to v, the frozen critic is never
        averaged, the fusion weights and the head are shared."""
        parts = name.split(".")
        if parts[0] == "encoders":
            return (int(parts[1]),)
        return None if parts[0] == "critic" else ()


def sample_compression(
    critic: JSDCritic, h: dict[int, torch.Tensor], h_fused: torch.Tensor, noise: dict[Any, torch.Tensor], mu_dim: int
) -> dict[str, torch.Tensor]:
    """The code's sample-level compression: z_v, z_F reparameterised from the outputs' (mu, sigma)
    with ``noise[v]`` / ``noise["fused"]``; returns sum_v JSD(z_F, z_v), sum_v I(z_v; z_F) and
    "total" = 0.01 (JSD + 10 I)."""
    z_f = reparameterise(*split_gaussian(h_fused, mu_dim), noise["fused"])
    jsd, i_z = h_fused.new_zeros(()), h_fused.new_zeros(())
    for v in sorted(h):
        z_v = reparameterise(*split_gaussian(h[v], mu_dim), noise[v])
        jsd = jsd + jsd_mi(critic, z_f, z_v)
        i_z = i_z + joint_mi(z_v, z_f)
    return {"jsd": jsd, "i_samples": i_z, "total": 0.01 * (jsd + 10.0 * i_z)}


def all_balanced_ce(y: dict[int, torch.Tensor], y_fused: torch.Tensor, logits: str = "softmax_p") -> torch.Tensor:
    """sum_v CE_v + CE_F of ``balanced_ce`` (every view's head and the fused head)."""
    return balanced_ce(y_fused, logits) + sum((balanced_ce(y[v], logits) for v in sorted(y)), y_fused.new_zeros(()))


def draw_noise(
    keys: list[Any], n: int, dim: int, generator: torch.Generator, device: torch.device
) -> dict[Any, torch.Tensor]:
    """theta ~ N(0, I) per key, drawn on the CPU generator (a seed gives the same run on any device)."""
    return {k: torch.randn(n, dim, generator=generator).to(device) for k in keys}


@torch.no_grad()
def ddc1_score(
    model: IBNetwork, views: dict[int, torch.Tensor], batches: list[torch.Tensor], relative_sigma: float = 0.15
) -> float:
    """Label-free selection score: DDC1 of Y_F, the sample-weighted mean over ``batches``, on the
    deterministic outputs with BatchNorm batch statistics."""
    from fedsim.methods.ddc import ddc_loss

    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with batch_statistics(model):
        for idx in batches:
            out = model({v: t[idx.to(t.device)] for v, t in views.items()})
            total += float(ddc_loss(out["y_fused"], out["hidden"], relative_sigma)["ddc1"]) * idx.numel()
            count += idx.numel()
    model.train(was_training)
    return total / max(count, 1)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


# A batch's loss: (model, views of the batch, the batch's sample indices, noise) -> (total, terms).
BatchLoss = Callable[[nn.Module, "dict[int, torch.Tensor]", torch.Tensor, "dict[Any, torch.Tensor]"], Any]


class IBMethod(Learner):
    """The ``Learner`` half MSDIB and GIB share (``fedsim.methods.base.Learner``). A subclass
    sets ``name`` and ``Config`` and implements ``batch_loss``; its config has ``setting(name)``
    (a reading's value unless the config sets one) for ``lr``, ``lr_step``, ``clip_norm``, ``keep_best``,
    ``batch_size``."""

    name: ClassVar[str]
    Config: ClassVar[type]
    # the argmax of the fused DDC head (MSDIB's code evaluates that way)
    run_defaults: ClassVar[dict[str, Any]] = {"evaluation": "argmax"}
    metric_names: ClassVar[tuple[str, ...]] = ("selection_loss", "fusion_weight_*")

    def __init__(self, config: Any, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients
        self.best = BestCheckpoint()

    def build_model(self, seed: int) -> IBNetwork:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return IBNetwork(
                self.view_dims, list(self.cfg.widths), self.cfg.mu_dim, self.n_clusters, self.cfg.head_hidden
            )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=self.cfg.setting("lr"))

    def server_average(self, model: nn.Module) -> ServerAverage:
        return ServerAverage.of(model, IBNetwork.owners_of, "samples")

    # -- one round = one epoch --------------------------------------------------------------------
    def batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        return drop_last_batches(n, self.cfg.setting("batch_size"), generator)

    def batch_loss(
        self, model: IBNetwork, x: dict[int, torch.Tensor], idx: torch.Tensor, noise: dict[Any, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def prepare_round(self, model: IBNetwork, data: LocalData, generator: torch.Generator) -> dict[str, float]:
        """Before the epoch's batches (after the learning rate is set); returns metrics for the
        round. Nothing by default."""
        return {}

    def train_round(
        self,
        model: IBNetwork,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext | None = None,
    ) -> dict[str, float]:
        context = context or RoundContext(1)
        cfg = self.cfg
        set_learning_rate(optimizer, step_lr(cfg.setting("lr"), context.round, cfg.setting("lr_step"), cfg.lr_gamma))
        extras = self.prepare_round(model, data, generator)
        model.train()
        device = next(iter(data.views.values())).device
        losses = RoundLosses()
        for idx in self.batches(data.n_samples, generator):
            idx = idx.to(device)
            x = {v: data.views[v][idx] for v in data.modalities}
            noise = draw_noise([*data.modalities, "fused"], idx.numel(), cfg.mu_dim, generator, device)
            total, terms = self.batch_loss(model, x, idx, noise)
            losses.step(optimizer, total, terms, cfg.setting("clip_norm"))
        out = {**losses.means(), **extras}
        if cfg.setting("keep_best"):
            out.update(self.best.track(model, self.selection_loss(model, data), context.round, context.total_rounds))
        return out

    # -- evaluation -------------------------------------------------------------------------------
    def embed(self, model: IBNetwork, data: LocalData) -> np.ndarray:
        """H_F on the deterministic outputs, BatchNorm with the statistics of the whole shard."""
        return shard_output(model, data.views, "h_fused")

    def soft_assignments(self, model: IBNetwork, data: LocalData) -> np.ndarray:
        """Y_F on the deterministic outputs, BatchNorm with the statistics of the whole shard."""
        return shard_output(model, data.views, "y_fused")

    def selection_loss(self, model: IBNetwork, data: LocalData) -> float:
        """DDC1 of Y_F over batches of ``batch_size`` in a fixed (seed 0) order."""
        batches = self.batches(data.n_samples, torch.Generator().manual_seed(0))
        return ddc1_score(model, data.views, batches, self.cfg.ddc_relative_sigma)

    @torch.no_grad()
    def extra_metrics(self, model: IBNetwork, data: LocalData) -> dict[str, float]:
        w = torch.softmax(model.fusion.weights.detach(), dim=0)
        return {f"fusion_weight_{v}": float(x) for v, x in enumerate(w.cpu())}
