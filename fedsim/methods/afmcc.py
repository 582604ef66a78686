"""AFMCC: Asynchronous Federated Multi-modal Constrained Clustering.

Paper: ../shared/papers/000_c429ab24434318c7.txt (Sections 3.2-3.5, Algorithms 1-2, Table 1).
Implementation notes from ../shared/papers/PROTOCOLS.md ("AFMCC specifics").

What is implemented, equation by equation:

- Sec. 3.2: per-modality encoders Input-512-128-d and symmetric decoders, ReLU (App.
  "Implementation details"); fused feature h_i = mean of z_i^v over the fusion set G (Eq. 1);
  decoders reconstruct every local modality from h (Eq. 2); contrastive L_d between h_i and
  z_i^v over all local modalities with temperature tau (Eq. 3).
- Sec. 3.3: p_i = softmax(W h_i) with a learnable W (K x d), Q = P P^T / (N/K),
  Q_tgt = lambda I + (1 - lambda) 11^T / K, L_c = ||Q - Q_tgt||^2 (Eqs. 4-5; squared Frobenius).
- Eq. 7: L = L_r + alpha L_d + beta L_c.
- Sec. 3.4, Eq. 6: client-specific weighted aggregation of all downloaded models.
- Sec. 3.5 / Alg. 2: download, aggregate, then for every non-empty subset G of the client's
  modalities, phi gradient steps with G as the fusion set; upload. (Alg. 1's pretraining is the
  runtime's ``pretrain`` phase: it calls ``train_round`` without aggregation.)

Where the paper is ambiguous or looks wrong, ``afmcc.reading`` decides (``READINGS`` below):
``lineage`` (default) is the reading that reproduces Table 2, built on the FMCSC code AFMCC says
it extends (Sec. 4.2, Table 3c; github 5Martina5/FMCSC, read not copied); ``printed`` is the
text as printed, kept as the record of the gap. Each switch below belongs to one of them:

- Eq. 3's denominator sums over j != i only (the positive pair is not in it), unlike InfoNCE.
  ``contrastive_denominator="printed"`` (both readings) or ``"all"`` (InfoNCE, j over all samples).
- Eq. 6 as printed weights a model by exp(+||Z_u^v - H||): models whose features deviate *more*
  from the local fused features get *more* weight, and exp overflows for large N. We compute it
  in log space (softmax of log eps_u) and keep the printed sign (``eq6_sign=+1``: Sec. 3.4 wants
  clients "to benefit from features of absent modalities", i.e. from the peers unlike them;
  -1 was measured worse). ``lineage`` takes the RMS distance ||.||_F / sqrt(N)
  (``eq6_distance``), since the Frobenius norm over ~208 samples makes the weights one-hot.
  Every round's weights are logged.
  Eq. 6 sums over v in V_u (the downloaded model's owner's modalities) but Z_u^v is computed on
  local samples, so only v in V_u ∩ V_local is computable: ``eq6_views="owner"`` (default, a
  peer sharing no modality gets weight 0) or ``"local"`` (all local modalities).
- Eq. 6's H: "for each downloaded model, the client extracts modality-specific features ... and
  fuses them"; H can be the client's *own* fused features (``eq6_reference="local"``, default:
  the deviation of each peer from the client) or the fusion of peer u's own features on the local
  samples (``eq6_reference="peer"``: eps_u then measures how well model u's modalities agree
  with its own fusion; for a one-modality client every peer scores 0 and the weights are uniform).
- ||.||_2 of a matrix in Eqs. 5-6 is read as the Frobenius norm.
- Eq. 2 sums the squared error over a modality's features (``reconstruction="printed"``). The
  FMCSC/MFLVC code lineage AFMCC follows uses ``nn.MSELoss`` per modality, a mean over the
  features: ``reconstruction="mse"`` (lineage). With Table 1's alpha = beta = 0.01 the printed sum makes
  L_r dominate L_d by ~3 orders of magnitude on BDGP's 1750-d view.
- Alg. 2 iterates over all 2^|V|-1 subsets; with many modalities (handwritten: 6 -> 63 subsets
  x phi steps) that dominates the round, so ``fusion_subsets`` can restrict it to the full set
  and the singletons. The default is the printed ``"all"``.

- Evaluation embeds h = Eq. 1 over all local modalities. ``embedding="fused"`` (printed) clusters
  h as it is; ``"normalized"`` (lineage) clusters h / ||h||, the unit-norm embeddings App. A.1 assumes
  ("||h_i|| = ||z_i^v|| = 1") and the geometry Eq. 3's cosine similarity trains (FMCSC, whose
  evaluation protocol AFMCC follows, clusters L2-normalised features too).
- Alg. 1's pretraining is "local training" of the designated client, read as Alg. 2's loss
  (``pretrain_loss="full"``, printed). ``"reconstruction"`` (lineage) pretrains on Eq. 2 alone, as the FMCSC
  code AFMCC builds on does (an autoencoder warm-up before any contrastive term; there 250
  full-batch epochs, i.e. ``pretrain.rounds=17`` at 15 steps per round on BDGP's 2 modalities).

- Eq. 3 with a one-modality fusion set G = {v} has h = z^v, so the pair (h, z^v) has similarity 1
  whatever the model and its term only pushes samples apart (for a one-modality client it is
  the whole of L_d). ``contrastive_pairs="nontrivial"`` (lineage) drops those pairs; "all" keeps them.
- A one-modality client then has no L_d at all, and its encoder drifts away from the space the
  full clients align (per-client ACC ~0.84 on MNIST-USPS against ~0.97 for full clients).
  FMCSC's code pulls its single-view clients towards the global model (a MOON term, weight 1);
  ``anchor`` (> 0) is that pull in AFMCC's terms: Eq. 3 with the round-start (aggregated)
  model's z^v of the same samples in place of h. It lifts MNIST-USPS' one-view clients but not
  BDGP's Table 2 as a whole, so it is off in both readings (grid ``table2_anchor``).

- Evaluation (Sec. 5: "following the experimental protocol of FMCSC"): FMCSC's code clusters a
  client's samples with the global model of its view pattern, aggregated from every client's
  upload, not with the client's own last upload. ``evaluated_model="aggregated"`` is that in
  AFMCC's terms: Eq. 6 applied to every client's latest upload, the model the client would start
  its next round from (lineage); ``"uploaded"`` clusters with the client's own last upload
  (printed). Training is the same either way.

Which reading reproduces Table 2 (numbers in reports/REPRODUCTION.md and
reports/findings/afmcc_table2.md): the printed reading does not (BDGP F/S 1:1: 76.4 +- 4.1 ACC
over 5 seeds against the paper's 93.9; grid table2_printed). Measured one change at a time on
BDGP F/S 1:1, the lineage reading's parts are: MSE reconstruction, reconstruction-only pretraining
and unit-norm embeddings (grid table2_lineage); pretraining chained through every client, as
FMCSC's code does (``pretrain.schedule: chain`` in the configs), which removes the seeds that
failed from a model pretrained on client 0's 208 samples; Eq. 6 on the RMS distance (on the
Frobenius norm every client adopts one peer, and a degenerating peer spreads to everyone);
dropping Eq. 3's constant pairs, which stops the collapse that set in after ~10 rounds on every
seed; evaluating each client on the Eq. 6 aggregate (FMCSC's evaluation) rather than on its own
upload, which lifts the one-modality clients most: BDGP 95.6 / 94.5 / 92.5 ACC at F/S 2:1 / 1:1
/ 1:2 (5 seeds) against 94.6 / 93.1 / 90.3 on the uploads, the paper's 95.7 / 93.9 / 90.7. The
one-modality clients' anchor was measured as a 5-seed BDGP grid on the uploads (table2_anchor:
94.7 / 92.4 / 89.7) and is not part of it.
"""

from __future__ import annotations

import itertools
import math
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn
from torch.func import functional_call

from fedsim.methods.base import Learner, LocalData, PeerModel, RoundContext, RoundLosses, unflatten
from fedsim.methods.blocks import mlp


# The two readings of the paper (``afmcc.reading``). A key set explicitly in a config wins over
# its reading's value; everything else comes from the reading.
READINGS: dict[str, dict[str, Any]] = {
    # The equations as printed: Eq. 2 summed over features, Eq. 6 with its + sign on the
    # Frobenius distance, Alg. 1 pretraining on all of Eq. 7, k-means on h as it is.
    "printed": {
        "reconstruction": "printed",
        "embedding": "fused",
        "pretrain_loss": "full",
        "eq6_sign": 1,
        "eq6_distance": "frobenius",
        "contrastive_pairs": "all",
        "evaluated_model": "uploaded",
    },
    # What reproduces Table 2: the FMCSC code lineage (nn.MSELoss, reconstruction-only
    # pretraining, unit-norm embeddings), Eq. 6 with its printed sign on the per-sample (RMS)
    # distance instead of the Frobenius norm that makes the weights one-hot, and Eq. 3
    # without its constant pairs (h = z^v when G = {v}), which only push samples apart and are
    # what makes the run degenerate after ~10 rounds (reports/findings/afmcc_table2.md); and
    # FMCSC's evaluation of the aggregated model (Sec. 5 follows FMCSC's protocol).
    "lineage": {
        "reconstruction": "mse",
        "embedding": "normalized",
        "pretrain_loss": "reconstruction",
        "eq6_sign": 1,
        "eq6_distance": "rms",
        "contrastive_pairs": "nontrivial",
        "evaluated_model": "aggregated",
    },
}


class AFMCCConfig(BaseModel):
    """AFMCC hyper-parameters; defaults are Table 1's BDGP row and App. implementation details.

    ``reading`` picks how the equations the paper leaves open are read (``READINGS``): the
    default ``lineage`` reproduces Table 2, ``printed`` is the literal text (the record of the
    gap, tune/grids/afmcc/table2_printed.yaml). Alg. 1's pretraining and the evaluation are
    run-level keys: the lineage configs chain pretraining through every client
    (``pretrain.schedule: chain``) and use FMCSC's 100 k-means restarts; the printed preset is
    ``afmcc.reading=printed pretrain.schedule=designated pretrain.rounds=null``."""

    model_config = ConfigDict(extra="forbid")

    reading: Literal["lineage", "printed"] = "lineage"
    d: int = Field(20, ge=1, description="latent dimension d")
    hidden: list[int] = Field(default_factory=lambda: [512, 128], description="encoder hidden widths")
    phi: int = Field(5, ge=1, description="gradient steps per fusion subset (phi / delta)")
    tau: float = Field(0.5, gt=0, description="temperature of Eq. 3")
    lambda_: float = Field(0.3, ge=0, le=1, description="flexibility of Q_tgt (Sec. 3.3)")
    alpha: float = Field(0.01, ge=0, description="weight of L_d (Eq. 7)")
    beta: float = Field(0.01, ge=0, description="weight of L_c (Eq. 7)")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(1024, ge=2)
    aggregation: Literal["eq6", "uniform"] = "eq6"  # uniform = Table 3b ablation C
    eq6_sign: Literal[1, -1]
    eq6_distance: Literal["frobenius", "rms"]
    eq6_temperature: float = Field(1.0, gt=0)
    eq6_views: Literal["owner", "local"] = "owner"
    eq6_reference: Literal["local", "peer"] = "local"
    use_contrastive: bool = True  # False = Table 3b ablation A
    use_constraint: bool = True  # False = Table 3b ablation B
    contrastive_denominator: Literal["printed", "all"] = "printed"
    contrastive_pairs: Literal["all", "nontrivial"]
    reconstruction: Literal["printed", "mse"]
    fusion_subsets: Literal["all", "full_and_single"] = "all"
    embedding: Literal["fused", "normalized"]
    pretrain_loss: Literal["full", "reconstruction"]
    anchor: float = Field(0.0, ge=0, description="weight of the one-modality clients' anchor term (grid table2_anchor)")
    # what a client clusters with: its last upload, or Eq. 6 applied to everyone's latest uploads
    evaluated_model: Literal["uploaded", "aggregated"]
    # Eq. 6 over every client's latest model (null, the paper) or over the client's own and the
    # `peers` most recent other uploads: a reading for federations too large to download every
    # model each round (1,000 clients of BDGP's model: 8.6 GB a round). The most recent uploads
    # are the freshest models (bench/bench_scale.py; README, "Large federations").
    peers: int | None = Field(None, ge=1, description="peers Eq. 6 reads (null: all)")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_reading(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        reading = data.get("reading", "lineage")
        if reading not in READINGS:
            return data  # the Literal check names the allowed readings
        return {**READINGS[reading], **data}


# ---------------------------------------------------------------------------------------------
# The model


class MultiModalAutoencoder(nn.Module):
    """Sec. 3.2: one encoder/decoder pair per modality plus the projection W of Sec. 3.3.

    Every client holds the full architecture (Alg. 1 copies client 1's weights to all clients);
    a client only trains the encoders/decoders of the modalities it has."""

    def __init__(self, view_dims: tuple[int, ...], hidden: list[int], d: int, n_clusters: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(mlp([dv, *hidden, d]) for dv in view_dims)
        self.decoders = nn.ModuleList(mlp([d, *reversed(hidden), dv]) for dv in view_dims)
        self.projection = nn.Linear(d, n_clusters, bias=False)  # W in Eq. 4

    def forward(self, views: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Encode each given modality: {v: z^v}."""
        return {v: self.encoders[v](x) for v, x in views.items()}


# ---------------------------------------------------------------------------------------------
# Losses (module-level so the tests can check them against hand computations)


def fuse(z: dict[int, torch.Tensor], subset: tuple[int, ...]) -> torch.Tensor:
    """Eq. 1: h_i = (1/|G|) sum_{v in G} z_i^v."""
    return torch.stack([z[v] for v in subset]).mean(dim=0)


def reconstruction_loss(
    x: dict[int, torch.Tensor], x_hat: dict[int, torch.Tensor], form: str = "printed"
) -> torch.Tensor:
    """Eq. 2: (1/N) sum_v sum_i ||x_i^v - x_hat_i^v||_2^2; ``form="mse"``: sum_v mean((x^v - x_hat^v)^2)."""
    if form == "mse":
        return sum(F.mse_loss(x_hat[v], x[v]) for v in x)
    n = next(iter(x.values())).shape[0]
    return sum(((x[v] - x_hat[v]) ** 2).sum() for v in x) / n


def contrastive_loss(
    h: torch.Tensor, z: dict[int, torch.Tensor], tau: float, denominator: str = "printed"
) -> torch.Tensor:
    """Eq. 3: -(1/N) sum_v sum_i log( e^{sim(h_i,z_i^v)/tau} / sum_{j != i} e^{sim(h_i,z_j^v)/tau} ).

    ``denominator="all"`` lets j run over every sample (InfoNCE) instead of j != i."""
    n = h.shape[0]
    h_n = F.normalize(h, dim=1)
    total = h.new_zeros(())
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=h.device)
    for zv in z.values():
        logits = h_n @ F.normalize(zv, dim=1).T / tau  # (N, N): sim(h_i, z_j^v) / tau
        positives = logits.diagonal()
        if denominator == "printed":
            log_denominator = torch.logsumexp(logits.masked_fill(~off_diagonal, float("-inf")), dim=1)
        else:
            log_denominator = torch.logsumexp(logits, dim=1)
        total = total - (positives - log_denominator).sum()
    return total / n


def target_correlation(n_clusters: int, lambda_: float, device: torch.device | None = None) -> torch.Tensor:
    """Q_tgt = lambda I_K + (1 - lambda) 11^T / K (Sec. 3.3)."""
    eye = torch.eye(n_clusters, device=device)
    return lambda_ * eye + (1.0 - lambda_) * torch.ones(n_clusters, n_clusters, device=device) / n_clusters


def class_correlation(p: torch.Tensor) -> torch.Tensor:
    """Eq. 4: Q = P P^T / (N/K) with P = [p_1..p_N] in R^{K x N}; ``p`` is (N, K)."""
    n, k = p.shape
    return p.T @ p / (n / k)


def constraint_loss(h: torch.Tensor, projection: nn.Linear, lambda_: float) -> torch.Tensor:
    """Eq. 5: L_c = ||Q - Q_tgt||^2 (squared Frobenius), p_i = softmax(W h_i)."""
    p = torch.softmax(projection(h), dim=1)
    q = class_correlation(p)
    return ((q - target_correlation(p.shape[1], lambda_, h.device)) ** 2).sum()


def eq6_log_weights(
    distances: torch.Tensor, valid: torch.Tensor, sign: int = 1, temperature: float = 1.0
) -> torch.Tensor:
    """Eq. 6 in log space.

    ``distances[u, v]`` = ||Z_u^v - H||_F; ``valid[u, v]`` marks the modalities summed for model u.
    log eps_u = logsumexp_v(sign * distance / temperature); the weights are softmax(log eps), i.e.
    eps_u / sum_i eps_i without ever forming exp(distance). A model with no valid modality gets
    weight 0 (eps_u = empty sum)."""
    scores = (sign * distances / temperature).masked_fill(~valid, float("-inf"))
    log_eps = torch.logsumexp(scores, dim=1)
    return torch.log_softmax(log_eps, dim=0)


# ---------------------------------------------------------------------------------------------
# The method


class AFMCC(Learner):
    """AFMCC on the fedsim method contract (``fedsim.methods.base.Learner``)."""

    name: ClassVar[str] = "afmcc"
    Config: ClassVar[type[BaseModel]] = AFMCCConfig
    # Alg. 1 line 1 (one pretrained model seeds every client) and Sec. 5's evaluation, FMCSC's
    # protocol (k-means on client 0, the others from its centres)
    run_defaults: ClassVar[dict[str, Any]] = {"pretrain": {"enabled": True}, "evaluation": "fmcsc"}

    def __init__(self, config: AFMCCConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients
        # read by the runtime: evaluate what Eq. 6 makes of every client's latest upload, and
        # how many peers Eq. 6 reads
        self.evaluates_aggregate = config.evaluated_model == "aggregated"
        self.max_peers = config.peers

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> MultiModalAutoencoder:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return MultiModalAutoencoder(self.view_dims, list(self.cfg.hidden), self.cfg.d, self.n_clusters)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    # -- Alg. 2, lines 2-4: aggregation --------------------------------------------------------
    @torch.no_grad()
    def aggregate(
        self, model: MultiModalAutoencoder, data: LocalData, peers: list[PeerModel]
    ) -> tuple[torch.Tensor, dict[int, float]]:
        if self.cfg.aggregation == "uniform":
            weights = torch.full((len(peers),), 1.0 / len(peers))
        else:
            local_views = data.modalities
            views = data.views
            h = fuse(model(views), local_views)  # H: the client's own fused features
            distances = torch.zeros(len(peers), len(local_views))
            valid = torch.zeros(len(peers), len(local_views), dtype=torch.bool)
            for row, peer in enumerate(peers):
                usable = [v for v in local_views if self.cfg.eq6_views == "local" or v in peer.modalities]
                if not usable:
                    continue
                z = functional_call(model, unflatten(model, peer.params), ({v: views[v] for v in usable},))
                reference = h if self.cfg.eq6_reference == "local" else fuse(z, tuple(z))
                for col, v in enumerate(local_views):
                    if v in z:
                        distances[row, col] = torch.linalg.norm(z[v] - reference)  # Frobenius
                        valid[row, col] = True
            if self.cfg.eq6_distance == "rms":
                # per-sample scale: ||.||_F / sqrt(N), so the weights do not sharpen with the
                # client's sample count (with the Frobenius norm, N = 208 makes them one-hot)
                distances = distances / math.sqrt(data.n_samples)
            weights = eq6_log_weights(distances, valid, self.cfg.eq6_sign, self.cfg.eq6_temperature).exp()
        # Accumulate instead of stacking: a (U, P) stack is a full copy of every downloaded model
        # per round (540 MB for 48 Multi-Fashion clients), times the rounds an actor runs at once.
        aggregated = torch.zeros_like(peers[0].params)
        for peer, w in zip(peers, weights.tolist()):
            if w:
                aggregated.add_(peer.params, alpha=w)
        return aggregated, {p.client_id: float(w) for p, w in zip(peers, weights)}

    # -- Alg. 2, lines 5-7: local training ------------------------------------------------------
    def fusion_subsets(self, modalities: tuple[int, ...]) -> list[tuple[int, ...]]:
        """Non-empty subsets of the client's modalities, smallest first so the round ends on the
        full set (the order is not given in Alg. 2)."""
        if self.cfg.fusion_subsets == "full_and_single" and len(modalities) > 2:
            return [(v,) for v in modalities] + [modalities]
        return [s for r in range(1, len(modalities) + 1) for s in itertools.combinations(modalities, r)]

    def loss(
        self,
        model: MultiModalAutoencoder,
        x: dict[int, torch.Tensor],
        subset: tuple[int, ...],
        reconstruction_only: bool = False,
        anchor: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. 7 on one batch with ``subset`` as the fusion set G (Eq. 2 alone when
        ``reconstruction_only``: the FMCSC-style pretraining of ``pretrain_loss="reconstruction"``).
        ``anchor``: the round-start model's z of a one-modality client's batch (``anchor`` term)."""
        z = model(x)
        h = fuse(z, subset)
        x_hat = {v: model.decoders[v](h) for v in x}
        terms = {"loss_r": reconstruction_loss(x, x_hat, self.cfg.reconstruction)}
        total = terms["loss_r"]
        if reconstruction_only:
            return total, terms
        # With a one-modality fusion set G = {v}, h = z^v: Eq. 3's pair (h, z^v) has similarity 1
        # whatever the model, so its term only pushes the samples apart ("nontrivial" drops it).
        z_d = (
            z
            if self.cfg.contrastive_pairs == "all" or len(subset) > 1
            else {v: t for v, t in z.items() if v not in subset}
        )
        if self.cfg.use_contrastive and z_d:
            terms["loss_d"] = contrastive_loss(h, z_d, self.cfg.tau, self.cfg.contrastive_denominator)
            total = total + self.cfg.alpha * terms["loss_d"]
        if self.cfg.use_constraint:
            terms["loss_c"] = constraint_loss(h, model.projection, self.cfg.lambda_)
            total = total + self.cfg.beta * terms["loss_c"]
        if anchor is not None:
            terms["loss_a"] = contrastive_loss(
                anchor, {v: z[v] for v in subset}, self.cfg.tau, self.cfg.contrastive_denominator
            )
            total = total + self.cfg.anchor * terms["loss_a"]
        return total, terms

    def train_round(
        self,
        model: MultiModalAutoencoder,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext | None = None,
    ) -> dict[str, float]:
        model.train()
        losses = RoundLosses()
        n = data.n_samples
        pretraining = context is not None and context.phase == "pretrain"
        reconstruction_only = self.cfg.pretrain_loss == "reconstruction" and pretraining
        # A one-modality client has no second view to align with (L_d is empty once the constant
        # pairs go), so its encoder drifts from the space the full clients align. The anchor term
        # is Eq. 3 with the round-start (aggregated) model's z^v in place of h: FMCSC's code gives
        # its single-view clients the same kind of pull towards the global model (a MOON term).
        anchor = None
        if self.cfg.anchor > 0 and not pretraining and len(data.modalities) == 1 < len(self.view_dims):
            with torch.no_grad():
                anchor = model(data.views)[data.modalities[0]]
        for subset in self.fusion_subsets(data.modalities):
            for _ in range(self.cfg.phi):
                a = anchor
                if n > self.cfg.batch_size:
                    idx = torch.randperm(n, generator=generator)[: self.cfg.batch_size].to(
                        next(iter(data.views.values())).device
                    )
                    x = {v: t[idx] for v, t in data.views.items()}
                    a = None if anchor is None else anchor[idx]
                else:  # full batch: the paper's setting (~208 samples per client, batch 1024)
                    x = data.views
                total, terms = self.loss(model, x, subset, reconstruction_only, a)
                losses.step(optimizer, total, terms)
        return losses.means()

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, model: MultiModalAutoencoder, data: LocalData) -> np.ndarray:
        """Fused features over all local modalities (Eq. 1 with G = V); L2-normalised rows with
        ``embedding="normalized"`` (the unit-norm embeddings App. A.1 assumes, and what Eq. 3's
        cosine similarity sees)."""
        model.eval()
        h = fuse(model(data.views), data.modalities)
        if self.cfg.embedding == "normalized":
            h = F.normalize(h, dim=1)
        return h.cpu().numpy()

    @torch.no_grad()
    def soft_assignments(self, model: MultiModalAutoencoder, data: LocalData) -> np.ndarray:
        """p_i = softmax(W h_i) of Eq. 4."""
        model.eval()
        h = fuse(model(data.views), data.modalities)
        return torch.softmax(model.projection(h), dim=1).cpu().numpy()

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents: 3 per training step (forward + backward) for every
        subset and step, plus one encoder pass per downloaded model for Eq. 6."""
        steps = len(self.fusion_subsets(data.modalities)) * self.cfg.phi
        aggregation = 0 if self.cfg.aggregation == "uniform" else num_peers + 1
        return float(data.n_samples * (3 * steps + aggregation))
