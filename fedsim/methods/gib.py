"""GIB: Granular Information Bottleneck for deep multi-modal clustering.

Paper: ../shared/papers/004_bdfb457f338739bc.txt (Sec. 2.3-2.7, Eqs. 2-7, App. A.4-A.6,
Tables 1-2). No code is public; GIB comes from MSDIB's group, and where its paper is silent this
module follows MSDIB's released code through the shared ``fedsim.methods.ib_common`` (which says
where that code was read). The granular balls are ``fedsim.methods.granular_balls``.

Model (as MSDIB's): per view a ``VariationalEncoder`` 512-512-256 (Sec. 3.1 prints the widths;
Linear-BN-ReLU at every layer and the mu / sigma split of the output are MSDIB's code), the
views' outputs H_v fused by softmax weights into H_F (App. A.6, Eq. 27), one DDC head shared by
every view and the fusion giving Y_v and Y_F.

Granular balls (Sec. 2.4.1): once per epoch, for every view and for the fusion, pseudo-labels by
k-means (k = the number of clusters) on the deterministic outputs of the client's samples, then
purity-driven splitting (theta = 0.9, n_th = 1.0 read as the whole shard: Sec. 3.1). In a batch,
C_v / C_F give every sample the centre of its ball over the ball's members in the batch (so the
ball terms have gradients). Eq. 24's product needs non-negative vectors: the ReLU outputs are.

Objective (Eq. 2 = Eq. 5 + Eq. 6 + Eq. 7):

    L = L_DDC(Y_F)
      + alpha mean_{i<j} I(C_i; C_j) - beta sum_i I(C_i; C_F)                                (Eq. 5)
      + alpha { sum_i I(X_i; H_i) + mean_{i<j} I(Y_i; Y_j) } - beta sum_i I(Y_i; Y_F)        (Eq. 6)

with every I the IIC joint-probability estimate (Eqs. 24-26, ``joint_mi``, raw vectors).
Choices where the paper is silent, each MSDIB's code:
- I(X_i; H_i) (Theorem 2 bounds it by a KL against a q "uniform, sum q = M/k", Eq. 23): MSDIB's
  code implements its identical Eq. 12 constraint as a cross-entropy against Sinkhorn-balanced
  pseudo-labels of every head, and its compression of the encoder as 0.01 (JSD + 10 I) between the
  view and fused samples z = mu + sigma theta (``sample_compression``); both stand here for
  sum_i I(X_i; H_i), under alpha.
- alpha = 0.8 and beta = 0.6: MSDIB's c1 (compression) and c2 (preservation); the paper gives
  only alpha, beta in (0, 1).
- The DDC head sees every sample's deterministic output (the code's head never sees a ball or a
  sample of z); Fig. 1's "cluster the balls, then map back" is not followed: with n_th = the whole
  shard each ball is one pseudo-label cluster, and a head on its centre only relabels k-means.
- With V > 2 views, the pair terms are means over pairs (two views: the printed single pair).
- Training: drop_last, gradient clip 5, StepLR x0.1 at epoch 50, 100 epochs, and within a run
  the epoch with the lowest DDC1 kept (MSDIB's code); lr and batch size per ``reading``.
Eq. 5 minimises I(C_i; C_j) as printed.

``reading`` (``READINGS``): ``tuned`` (default) is the reading that clusters best of those
measured (reports/findings/gib_targets.md): MSDIB's tuned changes (Adam lr 1e-3, the default of
DanielTrosten/mvc that MSDIB's release builds on, and the balanced CE on log p, ``ce_logits``),
MSDIB code's batch of 100, and Eq. 6's pair term on the features, I(H_i; H_j)
(``sample_pairs: h``), where MSDIB's code puts its pair term: minimising I(Y_i; Y_j) as printed
asks the views' assignments, which share one head, to be independent while Eq. 6's second term
asks each to agree with Y_F. ``printed`` is Sec. 3.1's lr 1e-4 and batch 256, Eq. 6 as printed,
and the CE as MSDIB's code computes it (softmax(p) as logits).

Table 2 ablations: ``use_balls`` / ``use_samples`` drop Eq. 5 / Eq. 6 (L_DDC is always on).
Evaluation: argmax of Y_F (``soft_assignments``), BatchNorm with the whole shard's statistics;
``selection_loss`` is DDC1 of Y_F. Federated use (no paper offers it): as MSDIB (fedsim/methods/
msdib.py); balls are built from the client's own samples only and never leave it.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from fedsim.methods.base import LocalData
from fedsim.methods.ddc import ddc_loss
from fedsim.methods.granular_balls import (
    GranularBalls,
    ball_centres,
    batch_ball_centres,
    generate_granular_balls,
    pseudo_labels,
)
from fedsim.methods.ib_common import (
    IBMethod,
    IBNetwork,
    all_balanced_ce,
    batch_statistics,
    joint_mi,
    mean_pairwise,
    sample_compression,
)

FUSED = "fused"  # key of the fused space beside the view indices

# Settings a reading fixes unless the config sets them (see the module docstring).
READINGS: dict[str, dict[str, Any]] = {
    "tuned": {"lr": 1e-3, "ce_logits": "log_p", "sample_pairs": "h", "batch_size": 100},
    "printed": {"lr": 1e-4, "ce_logits": "softmax_p", "sample_pairs": "y", "batch_size": 256},
}


class GIBConfig(BaseModel):
    """GIB hyper-parameters (see the module docstring for where each default comes from)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.8, ge=0, description="compression weight of Eqs. 5-6 (MSDIB code's c1)")
    beta: float = Field(0.6, ge=0, description="preservation weight of Eqs. 5-6 (MSDIB code's c2)")
    widths: list[int] = Field(default_factory=lambda: [512, 512, 256], description="encoder widths (Sec. 3.1)")
    mu_dim: int = Field(128, ge=1, description="leading output coordinates read as mu; the rest give sigma")
    head_hidden: int = Field(100, ge=1)
    reading: Literal["tuned", "printed"] = "tuned"
    lr: float | None = Field(None, gt=0, description="Adam learning rate (None: the reading's)")
    ce_logits: Literal["log_p", "softmax_p"] | None = Field(None, description="what the balanced CE takes as logits")
    sample_pairs: Literal["y", "h"] | None = Field(None, description="Eq. 6's pair term: I(Y_i; Y_j) or I(H_i; H_j)")
    lr_step: int | None = Field(50, ge=1, description="StepLR step in epochs (lr x lr_gamma); None: constant")
    lr_gamma: float = Field(0.1, gt=0)
    clip_norm: float | None = Field(5.0, gt=0)
    batch_size: int | None = Field(None, ge=2, description="None: the reading's (last partial batch dropped)")
    keep_best: bool = Field(True, description="keep the epoch with the lowest DDC1 of the run")
    purity_threshold: float = Field(0.9, gt=0, le=1, description="theta of Sec. 2.4.1")
    max_ball_fraction: float = Field(1.0, gt=0, le=1, description="n_th as a fraction of the client's samples")
    kmeans_n_init: int = Field(1, ge=1, description="restarts of the pseudo-label k-means per space and epoch")
    warm_start: bool = Field(True, description="start each epoch's pseudo-label k-means from the last epoch's centres")
    max_split_iterations: int = Field(100, ge=1)
    use_balls: bool = True  # False: Table 2 rows (1) and (3)
    use_samples: bool = True  # False: Table 2 rows (1) and (2)
    ddc_relative_sigma: float = Field(0.15, gt=0)

    def setting(self, name: str) -> Any:
        """The field, or the reading's value where the field is None (``IBMethod`` asks this way)."""
        value = getattr(self, name)
        return READINGS[self.reading].get(name) if value is None else value


class GIB(IBMethod):
    """GIB on the fedsim method contract (``fedsim.methods.base.Learner``); the network, the
    epoch loop and the evaluation are ``IBMethod``'s (MSDIB's machinery), the granular balls and
    the objective are GIB's."""

    name: ClassVar[str] = "gib"
    Config: ClassVar[type[BaseModel]] = GIBConfig

    def __init__(self, config: GIBConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        super().__init__(config, view_dims, n_clusters, num_clients)
        self._pseudo_centres: dict[Any, np.ndarray] = {}  # warm start of the next epoch
        self._ball_ids: dict[Any, torch.Tensor] = {}  # this epoch's ball of every sample, per space

    # -- granular balls -----------------------------------------------------------------------------
    def build_balls(self, points: np.ndarray, seed: int, space: Any = None) -> GranularBalls:
        """Pseudo-labels, then purity-driven splitting, on one space of the client's samples; with
        ``warm_start`` the k-means starts from that space's centres of the previous epoch."""
        init = self._pseudo_centres.get(space) if self.cfg.warm_start and space is not None else None
        labels = pseudo_labels(points, self.n_clusters, seed, self.cfg.kmeans_n_init, init)
        if space is not None:
            k = int(labels.max()) + 1
            self._pseudo_centres[space] = ball_centres(torch.from_numpy(points), torch.from_numpy(labels), k).numpy()
        return generate_granular_balls(
            points,
            labels,
            self.cfg.purity_threshold,
            self.cfg.max_ball_fraction * points.shape[0],
            self.cfg.max_split_iterations,
        )

    @torch.no_grad()
    def balls_per_space(self, model: IBNetwork, data: LocalData, seed: int) -> dict[Any, GranularBalls]:
        """Balls of every local view and of the fusion, on the deterministic outputs (BatchNorm
        with the whole shard's statistics). With one view the fused space is that view's."""
        was_training = model.training
        model.eval()
        with batch_statistics(model):
            out = model(data.views)
        model.train(was_training)
        spaces = {**out["h"], FUSED: out["h_fused"]}
        balls: dict[Any, GranularBalls] = {}
        for index, (key, z) in enumerate(spaces.items()):
            if key == FUSED and len(data.modalities) == 1:
                balls[key] = balls[data.modalities[0]]
                continue
            balls[key] = self.build_balls(z.detach().cpu().float().numpy(), seed + index, key)
        return balls

    # -- the objective ------------------------------------------------------------------------------
    def loss(
        self,
        model: IBNetwork,
        x: dict[int, torch.Tensor],
        ball_ids: dict[Any, torch.Tensor],
        noise: dict[Any, torch.Tensor],
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 2 on one batch: ``ball_ids[space]`` is every sample's ball in that space, ``noise``
        theta per view and under "fused"."""
        cfg = self.cfg
        out = model(x)
        h, h_fused, y, y_fused = out["h"], out["h_fused"], out["y"], out["y_fused"]
        ddc = ddc_loss(y_fused, out["hidden"], cfg.ddc_relative_sigma)
        terms = {"ddc": ddc["total"], "ddc1": ddc["ddc1"], "ddc2": ddc["ddc2"], "ddc3": ddc["ddc3"]}
        total = ddc["total"]
        zero = h_fused.new_zeros(())
        if cfg.use_balls:
            c = {v: batch_ball_centres(h[v], ball_ids[v]) for v in h}
            c_fused = batch_ball_centres(h_fused, ball_ids[FUSED])
            mi_cc = mean_pairwise(c, joint_mi)
            mi_cs = sum((joint_mi(c[v], c_fused) for v in c), zero)
            total = total + cfg.alpha * mi_cc - cfg.beta * mi_cs
            terms.update(mi_cc=mi_cc, mi_cs=mi_cs)
        if cfg.use_samples:
            samples = sample_compression(model.critic, h, h_fused, noise, cfg.mu_dim)
            ce = all_balanced_ce(y, y_fused, cfg.setting("ce_logits"))
            # Eq. 6's pair term, I(Y_i; Y_j) as printed or I(H_i; H_j) (``sample_pairs``)
            mi_pairs = mean_pairwise(y if cfg.setting("sample_pairs") == "y" else h, joint_mi)
            mi_ys = sum((joint_mi(y[v], y_fused) for v in y), zero)
            total = total + cfg.alpha * (samples["total"] + ce + mi_pairs) - cfg.beta * mi_ys
            terms.update(
                jsd=samples["jsd"], i_samples=samples["i_samples"], balanced_ce=ce, mi_pairs=mi_pairs, mi_ys=mi_ys
            )
        return total, terms

    def prepare_round(self, model: IBNetwork, data: LocalData, generator: torch.Generator) -> dict[str, float]:
        """Each epoch starts from balls rebuilt on the current outputs."""
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        balls = self.balls_per_space(model, data, seed) if self.cfg.use_balls else {}
        device = next(iter(data.views.values())).device
        self._ball_ids = {key: torch.from_numpy(b.assignment).to(device) for key, b in balls.items()}
        return {f"balls_{key}": float(b.n_balls) for key, b in balls.items()}

    def batch_loss(
        self, model: IBNetwork, x: dict[int, torch.Tensor], idx: torch.Tensor, noise: dict[Any, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.loss(model, x, {key: ids[idx] for key, ids in self._ball_ids.items()}, noise)

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents: one pass for the outputs the balls are built on, one
        k-means per space, and per view 9 for training (encoder, head and the critic, forward and
        backward)."""
        spaces = len(data.modalities) + (1 if len(data.modalities) > 1 else 0)
        return float(data.n_samples * (1 + spaces * self.cfg.kmeans_n_init + 9 * len(data.modalities)))
