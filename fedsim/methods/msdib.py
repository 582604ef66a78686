"""MSDIB: Multi-aspect Self-guided Deep Information Bottleneck for multi-modal clustering.

Paper: ../shared/papers/003_ab27bfa5cd4684e6.txt (Hu, Fan, Zou, Ye, AAAI 2025): Sec. "Proposed
Objective Function" (Eq. 1), "Information Compression" (Eq. 2), "Information Preservation"
(Eq. 3), "Deep Divergence-based Clustering Module" (Eq. 4), "Optimization" (Eqs. 5-17,
Alg. 1), "Implementation Details", Tables 1-2. Implementation notes from
../shared/papers/PROTOCOLS.md ("DDC loss"); the DDC head and loss are ``fedsim.methods.ddc``.

What is implemented, equation by equation:

- Encoders (Alg. 1 line 3, Eq. 10): one variational encoder per modality, Input-512-512 (ReLU)
  then two linear heads to the latent size 256 giving mu(x^i) and log sigma^2(x^i); during
  training h^i = mu(x^i) + sigma(x^i) * theta, theta ~ N(0, I) drawn from the round's generator.
  The paper gives no widths; 512-512-256 is the "unified MLP" of its sibling paper GIB (same
  group, ../shared/papers/004_bdfb457f338739bc.txt, Sec. 4 "Datasets and Backbones").
- Fusion (Sec. "Information Preservation"; GIB App. A.6, Eq. 27): H^s = sum_i w^i H^i with
  learned weights w initialised to 1/m and kept on the simplex (``fusion_weights``, below).
- Cluster assignments (Sec. "Information Preservation"): Y^i from a softmax MLP on H^i per
  modality, Y^s from one on H^s ("obtained similarly"); every head is the DDC head
  Linear(d -> 100)-ReLU-BatchNorm-Linear(100 -> K)-softmax of ``fedsim.methods.ddc``.
- L_DDC (Eq. 4, PROTOCOLS.md "DDC loss") on the global assignment Y^s only ("The clustering loss
  DDC of MSDIB is used for global clustering assignment"), kernel on the fused head's hidden layer.
- L_IC (Eq. 2, variational form Eq. 16) = sum_i (1/M) sum_n KL[N(mu_n^i, sigma_n^i) || N(0, I)]
  (Eqs. 11 and 13: the Gaussian encoder against the prior of the deep VIB of Alemi et al. 2017,
  which the paper follows at Eq. 10; analytic KL, so E_theta is exact)
  + sum_{i<j} I(H^i, H^j).
- L_IP (Eq. 3, Eq. 17) = sum_i I(H^i, H^s) + sum_i I(Y^i, Y^s).
- Every I(.,.) between representations or assignments is the joint-probability-matrix estimate of
  Eqs. 14-15: P = sum_n a_n b_n^T over the batch, symmetrised (P + P^T)/2, normalised to sum 1,
  marginals its row and column sums, I = sum P log(P / (p_a p_b)) (the IIC estimator; entries below
  float eps are clamped to eps, as IIC does, so log 0 never occurs). Eq. 14 needs non-negative
  vectors: assignments are softmax outputs already; a representation h_n is turned into a
  distribution over its d coordinates by a softmax (the paper does not say how; this is the only
  reading under which Eq. 14 is a joint distribution for real-valued features).
- Eq. 1: L = L_DDC - alpha L_IP + beta L_IC, one Adam step per batch of 100 (lr 1e-4, 100
  epochs: "Implementation Details"); one fedsim round = one epoch.

Where the paper is ambiguous or looks wrong, the printed version is the default and the
alternative a switch:

- Eqs. 16-17 scale the MI terms by 1/M with sums "i = 1..M, j = i+1..M" — M is the number of
  data instances (Eq. 12), yet i, j index modalities, and Eq. 15 already sums over modality pairs.
  We read "(1/M) sum over the M samples" of a batch-level estimate (constant over samples) as the
  estimate itself, which makes Eqs. 16-17 agree with Eqs. 2-3 (``mi_scale="eq2_eq3"``, default);
  ``mi_scale="inverse_batch"`` applies the literal factor 1/M (M = the batch size) to the MI terms.
- Eq. 17's first term is printed as (1/M) sum_n KL[p(h^s|h^i) || q(h^i)], but the text says
  "I(H^i, H^s) ... can be optimized similarly to I(H^i, H^j)", i.e. by Eqs. 14-15, and Eq. 3
  maximises I(H^i, H^s). A KL term maximised (L_IP enters Eq. 1 with -alpha) is unbounded and
  pushes H^s away from H^i, the opposite of "H^s guides H^i". Default ``ip_feature_term="mi"``
  (Eq. 3 with Eqs. 14-15); ``"eq17_kl"`` is the printed KL, read per sample between the feature
  distributions softmax(h^s_n) and softmax(h^i_n), with the printed sign (so it diverges).
  ``"none"`` drops the feature term and keeps sum_i I(Y^i, Y^s): not a reading of the paper, a
  diagnostic that tells which half of L_IP moves the Table 2 ablation (grid
  msdib/table2_kl_mean_ip_assignments).
- Eqs. 12-13 constrain the prior q by "sum_i q(x_i) = M/|C|" (a uniform split over clusters);
  for the Gaussian posterior of Eq. 10 that constraint defines no distribution, so q is the
  standard normal of the VIB (Alemi et al. 2017) and Eq. 12 is not implemented (the DDC loss
  already balances the clusters).
- Eq. 11's KL of the d-dimensional Gaussian encoder is a sum over the d = 256 coordinates
  (``kl_reduction="sum"``, default). With beta = 1 it pulls every posterior onto the prior (the
  KL term fell to ~0.02 nats per sample on Scene-15 within 8 epochs: H carries almost no
  information and the clustering is near chance: centralised, seed 0, 100 epochs, one restart,
  Scene-15 ACC 14.3 / NMI 6.6, Hdigit ACC 20.8 / NMI 6.7); ``kl_reduction="mean"`` divides it by d
  (same runs: Scene-15 ACC 26.1 / NMI 29.6, Hdigit ACC 41.3 / NMI 49.2). The paper's datasets are not held here, so which
  reading reproduces its Table 1 cannot be checked. Neither reproduces Table 2's ordering on the
  datasets held: under "sum" every information term costs accuracy; under "mean" L_IC helps and
  L_IP still costs it (reports/findings/msdib_table2_kl_mean.md and the grids beside it).
- "Kept on the simplex" (GIB App. A.6: the weights are learned by back-propagation "while
  ensuring that the sum of the weights remains 1"): ``fusion_weights="projected"`` (default)
  learns w itself and projects it back onto the simplex after every optimiser step (Euclidean
  projection, Duchi et al. 2008); ``"softmax"`` uses w = softmax(v) of free logits v initialised
  to 1/m (the weighted-mean fusion of the DDC/CoMVC reference code lineage).
- "20 runs, selecting the highest accuracy at the lowest loss" uses the labels. The label-free
  ``selection_loss`` (DDC1 on the client's data, PROTOCOLS.md) is what the platform's
  ``model_selection: {criterion: loss}`` uses by default; ``criterion: acc`` is the paper's
  label-using choice, labelled as such by the platform.

Table 2 ablations: ``use_ic`` / ``use_ip`` drop L_IC / L_IP (DDC only, DDC+IC, DDC+IP, all).
"Free-parameter MSDIB" (Table 1) is alpha = beta = 1, the only trade-off values the paper
prints (the tuned ones are only plotted in Fig. 2), hence the defaults.

Evaluation details the runtime forces: the runtime ships parameters, not buffers, so BatchNorm
running statistics never reach the evaluator; ``soft_assignments`` and ``selection_loss``
therefore normalise the heads' BatchNorm with batch statistics (the whole client shard for the
first, batches of the training batch size for the second), never with running statistics.
``embed`` (H^s of the posterior means) passes no BatchNorm.

Federated use (no paper does this; MSDIB is centralised). Each client runs the centralised
objective on its own samples as its local learner, one epoch per round, and ``aggregate`` is the
modality-aware FedAvg of ``fedsim.methods.base.modality_aware_average``: a modality's encoder and
its cluster head Y^i are averaged, weighted by sample count, over the clients holding that
modality only; the fusion weights (an average of points of the simplex stays on it) and the
global head Y^s over all clients. A client holding a
subset S of the modalities fuses with its own weights renormalised over S, and its simplex
projection moves only the weights of S (keeping their total), so the full vector stays on the
simplex and the weights of modalities it lacks are left alone. A single-modality client has
H^s = H^i exactly (its weight is irrelevant and gets no gradient), so its L_IP terms become
I(H^i, H^i) and I(Y^i, Y^s) (the modality head against the global head on the same features), and
its L_IC has no pair term; it still trains its encoder, its modality head and the global head.
A centralised run (one client) is exactly the paper's setting: FedAvg over one model is the model.
"""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import ClassVar, Iterator, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from fedsim.methods.base import LocalData, PeerModel, RoundContext, RoundLosses, minibatches, modality_aware_average
from fedsim.methods.ddc import DDCHead, ddc_loss


class MSDIBConfig(BaseModel):
    """MSDIB hyper-parameters; defaults are the paper's ("Implementation Details"; alpha = beta =
    1 is its "Free-parameter MSDIB", the only printed trade-off values)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0, description="weight of L_IP (Eq. 1)")
    beta: float = Field(1.0, ge=0, description="weight of L_IC (Eq. 1)")
    hidden: list[int] = Field(default_factory=lambda: [512, 512], description="encoder hidden widths")
    latent_dim: int = Field(256, ge=1, description="size of H^i and H^s")
    head_hidden: int = Field(100, ge=1, description="hidden width of the DDC heads")
    lr: float = Field(1e-4, gt=0)
    batch_size: int = Field(100, ge=2)
    use_ic: bool = True  # False: Table 2 rows without L_IC
    use_ip: bool = True  # False: Table 2 rows without L_IP
    fusion_weights: Literal["projected", "softmax"] = "projected"
    mi_scale: Literal["eq2_eq3", "inverse_batch"] = "eq2_eq3"
    ip_feature_term: Literal["mi", "eq17_kl", "none"] = "mi"
    kl_reduction: Literal["sum", "mean"] = "sum"
    ddc_relative_sigma: float = Field(0.15, gt=0, description="sigma^2 = this x median distance (DDC kernel)")


# ---------------------------------------------------------------------------------------------
# The model


class VariationalEncoder(nn.Module):
    """Eq. 10: x -> (mu(x), log sigma^2(x)); an MLP trunk with ReLU, then two linear heads."""

    def __init__(self, in_dim: int, hidden: list[int], latent_dim: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise([in_dim, *hidden]):
            layers += [nn.Linear(a, b), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        width = hidden[-1] if hidden else in_dim
        self.mean = nn.Linear(width, latent_dim)
        self.log_var = nn.Linear(width, latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.trunk(x)
        return self.mean(t), self.log_var(t)


class MSDIBNetwork(nn.Module):
    """Encoders per modality, fusion weights, a cluster head per modality (Y^i) and one on the
    fused representation (Y^s). Every client holds all of it; it trains only what it uses."""

    def __init__(self, view_dims: tuple[int, ...], hidden: list[int], latent_dim: int, n_clusters: int,
                 head_hidden: int, fusion_weights: str) -> None:
        super().__init__()
        m = len(view_dims)
        self.encoders = nn.ModuleList(VariationalEncoder(dv, hidden, latent_dim) for dv in view_dims)
        # Both parameterisations start at 1/m: projected w = 1/m; softmax(1/m, ..., 1/m) = 1/m.
        self.fusion_weights = nn.Parameter(torch.full((m,), 1.0 / m))
        self.fusion_mode = fusion_weights
        self.modality_heads = nn.ModuleList(DDCHead(latent_dim, n_clusters, head_hidden) for _ in view_dims)
        self.fused_head = DDCHead(latent_dim, n_clusters, head_hidden)

    def weights_for(self, modalities: tuple[int, ...]) -> torch.Tensor:
        """The fusion weights of ``modalities``, summing to 1 over them.

        ``projected``: w_S / sum(w_S) with the sum detached: for a client holding every modality
        the sum is 1, so H^s = sum_i w^i H^i exactly as printed and the gradient is the plain one
        (projected gradient descent); a subset client sees its weights rescaled to sum 1."""
        idx = list(modalities)
        if len(idx) == 1:  # H^s = H^i: the weight of a lone modality is 1 whatever w says
            return torch.ones(1, dtype=self.fusion_weights.dtype, device=self.fusion_weights.device)
        if self.fusion_mode == "softmax":
            return torch.softmax(self.fusion_weights[idx], dim=0)
        w = self.fusion_weights[idx]
        total = float(w.detach().sum())
        if total <= 1e-12:  # every local weight projected to 0: fall back to uniform
            return torch.full_like(w, 1.0 / len(idx))
        return w / total


# ---------------------------------------------------------------------------------------------
# Losses (module-level so the tests can check them against hand computations)


def mi_floor(dtype: torch.dtype) -> float:
    """The clamp of Eq. 15's logs (IIC's EPS): float eps of the working precision."""
    return float(torch.finfo(dtype).eps)


def joint_probability(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 14 and the two steps after it: P = sum_n a_n b_n^T over the batch, (P + P^T) / 2,
    P / sum(P). ``a``, ``b`` are (n, d) non-negative rows (distributions over d outcomes)."""
    p = a.T @ b  # (d, d): sum over the batch of the outer products a_n b_n^T
    p = (p + p.T) / 2.0
    return p / p.sum()


def joint_probability_mi(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 15 for one pair: sum_{kl} P_kl log(P_kl / (p_k p_l)), P from ``joint_probability``."""
    p = joint_probability(a, b)
    eps = mi_floor(p.dtype)
    row = p.sum(dim=1, keepdim=True).clamp_min(eps)
    col = p.sum(dim=0, keepdim=True).clamp_min(eps)
    p = p.clamp_min(eps)
    return (p * (torch.log(p) - torch.log(row) - torch.log(col))).sum()


def feature_distribution(h: torch.Tensor) -> torch.Tensor:
    """A representation as a distribution over its coordinates (softmax), so Eq. 14 applies."""
    return torch.softmax(h, dim=1)


def gaussian_kl(mu: torch.Tensor, log_var: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Eqs. 11, 13: per sample KL[N(mu, diag sigma^2) || N(0, I)]
    = 1/2 sum_d (mu^2 + sigma^2 - log sigma^2 - 1); returns (n,). ``reduction="mean"`` divides
    by the latent size d (the mean over coordinates instead of the KL's sum)."""
    per_coordinate = 0.5 * (mu.pow(2) + log_var.exp() - log_var - 1.0)
    return per_coordinate.sum(dim=1) if reduction == "sum" else per_coordinate.mean(dim=1)


def mi_factor(mi_scale: str, batch_size: int) -> float:
    """1 (Eqs. 2-3, and Eqs. 16-17 read as a sample average of a batch-level term) or 1/M."""
    return 1.0 if mi_scale == "eq2_eq3" else 1.0 / batch_size


def compression_loss(mu: dict[int, torch.Tensor], log_var: dict[int, torch.Tensor], h: dict[int, torch.Tensor],
                     mi_scale: str = "eq2_eq3", kl_reduction: str = "sum") -> dict[str, torch.Tensor]:
    """L_IC, Eq. 16 (Eq. 2): sum_i (1/M) sum_n KL_n^i + factor * sum_{i<j} I(H^i, H^j).

    Returns {"kl", "mi", "total"}; ``mi`` is the unscaled pair sum (0 with one modality)."""
    modalities = sorted(h)
    n = h[modalities[0]].shape[0]
    kl = sum(gaussian_kl(mu[v], log_var[v], kl_reduction).mean() for v in modalities)
    mi = h[modalities[0]].new_zeros(())
    for i, j in itertools.combinations(modalities, 2):
        mi = mi + joint_probability_mi(feature_distribution(h[i]), feature_distribution(h[j]))
    return {"kl": kl, "mi": mi, "total": kl + mi_factor(mi_scale, n) * mi}


def preservation_loss(h: dict[int, torch.Tensor], h_fused: torch.Tensor, y: dict[int, torch.Tensor],
                      y_fused: torch.Tensor, mi_scale: str = "eq2_eq3",
                      feature_term: str = "mi") -> dict[str, torch.Tensor]:
    """L_IP, Eq. 17 (Eq. 3): factor * [sum_i I(H^i, H^s) + sum_i I(Y^i, Y^s)] (maximised in Eq. 1).

    ``feature_term="eq17_kl"`` replaces sum_i I(H^i, H^s) by the printed
    sum_i (1/M) sum_n KL[softmax(h^s_n) || softmax(h^i_n)] (a per-sample average, never scaled by
    ``mi_scale``); ``feature_term="none"`` leaves it out (features = 0). Returns {"features",
    "assignments"} (unscaled) and "total"."""
    n = h_fused.shape[0]
    factor = mi_factor(mi_scale, n)
    p_fused = feature_distribution(h_fused)
    features = h_fused.new_zeros(())
    assignments = h_fused.new_zeros(())
    for v in sorted(h):
        if feature_term == "mi":
            features = features + joint_probability_mi(feature_distribution(h[v]), p_fused)
        elif feature_term == "eq17_kl":
            log_ratio = torch.log_softmax(h_fused, dim=1) - torch.log_softmax(h[v], dim=1)
            features = features + (p_fused * log_ratio).sum(dim=1).mean()
        assignments = assignments + joint_probability_mi(y[v], y_fused)
    feature_factor = factor if feature_term == "mi" else 1.0
    return {"features": features, "assignments": assignments,
            "total": feature_factor * features + factor * assignments}


def project_to_simplex(v: torch.Tensor, mass: float = 1.0) -> torch.Tensor:
    """Euclidean projection of ``v`` onto {w >= 0, sum w = mass} (Duchi et al. 2008, Fig. 1)."""
    u, _ = torch.sort(v, descending=True)
    cumulative = torch.cumsum(u, dim=0) - mass
    ranks = torch.arange(1, v.numel() + 1, dtype=v.dtype, device=v.device)
    rho = int(torch.nonzero(u - cumulative / ranks > 0).max())
    theta = cumulative[rho] / (rho + 1)
    return (v - theta).clamp_min(0.0)


@contextmanager
def batch_statistics(model: nn.Module) -> Iterator[None]:
    """BatchNorm normalises with the statistics of the batch it sees and updates nothing.

    The runtime ships parameters only, so an evaluated model's running statistics are those of a
    fresh model; evaluation must use batch statistics (train-mode BatchNorm without tracking)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.training, m.track_running_stats) for m in norms]
    for m in norms:
        m.train()
        m.track_running_stats = False  # train mode + no tracking: batch stats, buffers untouched
    try:
        yield
    finally:
        for m, (training, tracking) in zip(norms, saved):
            m.train(training)
            m.track_running_stats = tracking


# ---------------------------------------------------------------------------------------------
# The method


class MSDIB:
    """MSDIB on the fedsim method protocol (see ``fedsim.methods.base.Method``)."""

    name: ClassVar[str] = "msdib"
    Config: ClassVar[type[BaseModel]] = MSDIBConfig

    def __init__(self, config: MSDIBConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> MSDIBNetwork:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MSDIBNetwork(self.view_dims, list(self.cfg.hidden), self.cfg.latent_dim, self.n_clusters,
                                self.cfg.head_hidden, self.cfg.fusion_weights)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    # -- aggregation: modality-aware FedAvg (see the module docstring) --------------------------
    @staticmethod
    def modality_of(param_name: str) -> int | None:
        """Encoder v and cluster head Y^v belong to modality v; fusion weights and Y^s are shared."""
        parts = param_name.split(".")
        if parts[0] in ("encoders", "modality_heads"):
            return int(parts[1])
        return None

    @torch.no_grad()
    def aggregate(self, model: MSDIBNetwork, data: LocalData, peers: list[PeerModel]) -> tuple[torch.Tensor, dict[int, float]]:
        return modality_aware_average(model, peers, self.modality_of)

    # -- the objective, Eq. 1 -------------------------------------------------------------------
    def forward(self, model: MSDIBNetwork, x: dict[int, torch.Tensor],
                noise: dict[int, torch.Tensor] | None = None) -> dict[str, object]:
        """Encode, sample (Eq. 10; the means when ``noise`` is None), fuse and assign."""
        modalities = tuple(sorted(x))
        mu, log_var, h = {}, {}, {}
        for v in modalities:
            mu[v], log_var[v] = model.encoders[v](x[v])
            h[v] = mu[v] if noise is None else mu[v] + torch.exp(0.5 * log_var[v]) * noise[v]
        weights = model.weights_for(modalities)
        h_fused = sum(w * h[v] for w, v in zip(weights, modalities))
        y_fused, hidden_fused = model.fused_head(h_fused)
        y = {v: model.modality_heads[v](h[v])[0] for v in modalities}
        return {"mu": mu, "log_var": log_var, "h": h, "h_fused": h_fused, "y": y, "y_fused": y_fused,
                "hidden_fused": hidden_fused}

    def loss(self, model: MSDIBNetwork, x: dict[int, torch.Tensor],
             noise: dict[int, torch.Tensor] | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 1 on one batch: L = L_DDC - alpha L_IP + beta L_IC (ablations drop terms)."""
        cfg = self.cfg
        out = self.forward(model, x, noise)
        ddc = ddc_loss(out["y_fused"], out["hidden_fused"], cfg.ddc_relative_sigma)
        terms = {"ddc": ddc["total"], "ddc1": ddc["ddc1"], "ddc2": ddc["ddc2"], "ddc3": ddc["ddc3"]}
        total = ddc["total"]
        if cfg.use_ip:
            ip = preservation_loss(out["h"], out["h_fused"], out["y"], out["y_fused"], cfg.mi_scale, cfg.ip_feature_term)
            terms.update(ip=ip["total"], ip_features=ip["features"], ip_assignments=ip["assignments"])
            total = total - cfg.alpha * ip["total"]
        if cfg.use_ic:
            ic = compression_loss(out["mu"], out["log_var"], out["h"], cfg.mi_scale, cfg.kl_reduction)
            terms.update(ic=ic["total"], ic_kl=ic["kl"], ic_mi=ic["mi"])
            total = total + cfg.beta * ic["total"]
        return total, terms

    # -- one round = one epoch (Alg. 1, lines 3-7) ----------------------------------------------
    def batches(self, n: int, generator: torch.Generator) -> list[torch.Tensor]:
        """A seeded shuffle cut into batches of ``batch_size``; a trailing batch of one sample is
        merged into the previous one (BatchNorm and DDC2's n(n-1) need two samples)."""
        return minibatches(n, self.cfg.batch_size, generator, min_size=2)

    @torch.no_grad()
    def _project_fusion_weights(self, model: MSDIBNetwork, modalities: tuple[int, ...], mass: float) -> None:
        """Put the local modalities' weights back on {w >= 0, sum = mass} (mass = 1 for a client
        holding every modality): the full weight vector stays on the simplex."""
        if model.fusion_mode != "projected" or len(modalities) < 2:
            return
        idx = list(modalities)
        model.fusion_weights[idx] = project_to_simplex(model.fusion_weights[idx], mass)

    def train_round(self, model: MSDIBNetwork, optimizer: torch.optim.Optimizer, data: LocalData,
                    generator: torch.Generator, context: RoundContext | None = None) -> dict[str, float]:
        model.train()
        modalities = data.modalities
        device = next(iter(data.views.values())).device
        losses = RoundLosses()
        for idx in self.batches(data.n_samples, generator):
            x = {v: data.views[v][idx.to(device)] for v in modalities}
            # theta of Eq. 10, drawn on the CPU generator so a seed gives the same run on any device
            noise = {v: torch.randn(idx.numel(), self.cfg.latent_dim, generator=generator).to(device) for v in modalities}
            mass = float(model.fusion_weights.detach()[list(modalities)].sum())
            total, terms = self.loss(model, x, noise)
            losses.step(optimizer, total, terms)
            self._project_fusion_weights(model, modalities, mass)
        return losses.means()

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, model: MSDIBNetwork, data: LocalData) -> np.ndarray:
        """H^s from the posterior means mu (no sampling) over the client's modalities."""
        model.eval()
        return self.forward(model, data.views)["h_fused"].cpu().numpy()

    @torch.no_grad()
    def soft_assignments(self, model: MSDIBNetwork, data: LocalData) -> np.ndarray:
        """Y^s, the global assignment (the paper's label predictor C), on the posterior means;
        BatchNorm with the statistics of the client's whole shard (see the module docstring)."""
        model.eval()
        with batch_statistics(model):
            return self.forward(model, data.views)["y_fused"].cpu().numpy()

    @torch.no_grad()
    def selection_loss(self, model: MSDIBNetwork, data: LocalData) -> float:
        """Label-free model selection (PROTOCOLS.md "DDC loss"): DDC1 of Y^s on the client's data,
        the mean over batches of the training batch size in a fixed (seed 0) order, on the
        posterior means, BatchNorm with batch statistics as in training."""
        model.eval()
        total, count = 0.0, 0
        with batch_statistics(model):
            for idx in self.batches(data.n_samples, torch.Generator().manual_seed(0)):
                if idx.numel() < 2:
                    continue
                x = {v: t[idx.to(t.device)] for v, t in data.views.items()}
                out = self.forward(model, x)
                ddc1 = ddc_loss(out["y_fused"], out["hidden_fused"], self.cfg.ddc_relative_sigma)["ddc1"]
                total += float(ddc1) * idx.numel()
                count += idx.numel()
        return total / max(count, 1)

    @torch.no_grad()
    def extra_metrics(self, model: MSDIBNetwork, data: LocalData) -> dict[str, float]:
        """The learned fusion weights w (global vector), logged with the final evaluation."""
        w = model.fusion_weights.detach()
        if model.fusion_mode == "softmax":
            w = torch.softmax(w, dim=0)
        return {f"fusion_weight_{v}": float(x) for v, x in enumerate(w.cpu())}

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents: per local modality, one encoder + head pass forward
        and two for the backward pass (3 per sample); FedAvg itself costs no forward pass."""
        return float(3 * data.n_samples * len(data.modalities))
