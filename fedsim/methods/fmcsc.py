"""FMCSC: federated multi-view clustering in heterogeneous hybrid views (Chen et al., NeurIPS 2024).

Paper: "Bridging gaps: Federated multi-view clustering in heterogeneous hybrid views"; the
protocol is its public code, github.com/5Martina5/FMCSC at bd246c5a (files cited below), as
summarised in ../shared/papers/PROTOCOLS.md ("FMCSC"). Our own code; the references say which
function each part follows.

- Network (my_network.py ``Network``), one per view pattern: per view an encoder
  in-500-500-2000-d and a decoder d-2000-500-500-in (each view decoded from its own z_v), a head
  r_v = MLP_R(z_v) (d-256-20) per view and a fusion head h = normalise(MLP_H([z_1..z_V]))
  (V*d-256-20), ReLU between layers. A missing view is a zero-filled input: the network always
  takes all V views. The unused ``centroids`` parameter is left out; ``projection`` (W, K x 20)
  is AFMCC's L_c head, only trained with ``constraint_weight > 0``.
- Losses (loss.py): ``nt_xent`` = ``Loss.forward_feature``(r_v, h), NT-Xent over 2N rows with the
  raw dot product (r_v unnormalised, h normalised), 2N-2 negatives, CE summed / 2N;
  ``moon_loss`` = ``Loss.forward_model``: logits [cos(glob_h, h), cos(h, z_v)] / tau_l, mean CE
  with label 0. Reconstruction: ``nn.MSELoss`` per view, summed over ALL V views (zero-filled
  views included: a single-view client learns to reconstruct zeros).
- Pretraining (main.py ``pretrain``): reconstruction only, 250 epochs per client with one Adam per
  client, ONE model chained through every client (``pretrain.schedule: chain`` in the runtime:
  ``pretrain.rounds`` x ``pretrain_epochs_per_round`` = 250). The round ends by copying the
  network into every slot with ``pattern_weights`` = 1, so round 1's aggregation is the identity.
- Global models (main.py ``aggregate_models1`` / ``aggregate_models2``): one per view pattern,
  the full pattern and each single view (slot 0 = full, slot 1 + v = view v). Clients with
  2..V-1 of V views do not exist in FMCSC and are refused (``ConfigError``). The server step is
  a per-pattern average of every upload weighted by its MI weight / the weights' sum; negative
  weights are kept as the code keeps them. Guard (ours): if the sum is 0 or not finite, a plain
  mean over the uploads with non-zero weight, or over all uploads if none (then every upload is
  the unchanged copy of the previous global). Here the clients compute it in ``aggregate``.
- Full client round (main.py training loop, ``local_train``, ``local_full_train``): local :=
  global full model; ``main_epochs`` epochs, EACH with a fresh Adam, on sum_v [NT-Xent(r_v, h) +
  MSE(x_v, xr_v)] (+ ``constraint_weight`` * AFMCC's L_c(h), Table 3c). Then for every pattern P
  a copy of P's round-start global is trained ``distill_epochs`` epochs (one Adam) on this
  client's data with the views outside P zero-filled: sum_v MSE(x_v, xr_v) (full targets) +
  MSE(h_P, h_ref), h_ref = the trained local model's h on the full input (no gradient). Upload
  weight (``metric.mutual_information``, 10-bin histogram MI): partial P: MI(h, glob_h) -
  MI(h, z_P[0]); full P: sum_v MI(h, r_v); h, z, r from the last forward (before the last step),
  glob_h = the round-start P model on that batch (the code's first forward, at full batch).
- Single-view client round (``local_train``, ``local_single_train``): its own persistent local
  model; ``main_epochs`` epochs (fresh Adam each) on MOON(glob_h, h, z_v) + sum over all views
  of MSE, glob_h from its pattern's global on the same input (no gradient). Round 1 uploads
  nothing (weight 0 everywhere); later rounds upload the local model for its own pattern with
  weight MI(h, glob_h) - MI(h, z_v) on the whole shard (eval mode), 0 for other patterns.
- Evaluation (main.py ``valid``): each client embeds its samples with the aggregated global of
  its own pattern (``evaluates_aggregate``: the runtime aggregates every client's latest upload
  first); the runtime's ``evaluation: fmcsc`` clusters them (k-means on client 0, 100 inits).

Round order. The code trains its clients one after another over shared objects: full clients
train ``glob_models[full]`` in place, so within a round each continues the previous one's model,
and every single-view client's ``local_models`` entry is the one pretrained object, trained by
each single-view client in turn and uploaded (by reference) as it stands at the round's end. The
FMCSC configs reproduce this with the runtime's ``round_order: sequential`` (see ``aggregate``):
each upload carries the round's globals (``start``) and its round, so a later client of the round
rebuilds what the code's shared objects hold. ``round_order: parallel`` is the federated reading:
every client of a round starts from the same aggregated globals and keeps its own local model.
Other differences: the code iterates a client's shard in a fixed order; above 256 samples we
shuffle each epoch with the round's generator (at FMCSC's ~208 samples per client every epoch is
one full batch).
Table 3c (AFMCC paper): ``constraint_weight`` 0.01 with ``lambda_`` 0.3 adds L_c to the full
clients' local loss; ``carry_projection`` (default) copies the trained W into the full-pattern
upload, otherwise W would restart from its pretrained value every round (the local model is
never uploaded). The runtime's optimizer serves pretraining only; training uses fresh Adams.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from fedsim.errors import ConfigError
from fedsim.methods.afmcc import constraint_loss
from fedsim.methods.blocks import mlp
from fedsim.methods.base import (
    Learner,
    LocalData,
    PeerModel,
    RoundContext,
    RoundLosses,
    flat_parameters,
    minibatches,
    parameter_segments,
)


class FMCSCConfig(BaseModel):
    """FMCSC hyper-parameters; defaults are main.py's BDGP settings."""

    model_config = ConfigDict(extra="forbid")

    feature_dim: int = Field(20, ge=1, description="d: the encoders' output z_v")
    hidden: list[int] = Field(default_factory=lambda: [500, 500, 2000], description="encoder hidden widths")
    head_width: int = Field(256, ge=1, description="hidden width of MLP_R and MLP_H")
    head_dim: int = Field(20, ge=1, description="output of MLP_R and MLP_H (r_v, h)")
    lr: float = Field(3e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    tau_f: float = Field(0.5, gt=0, description="NT-Xent temperature (forward_feature)")
    tau_l: float = Field(0.5, gt=0, description="MOON temperature (forward_model)")
    main_epochs: int = Field(10, ge=1, description="local epochs per round, a fresh Adam each (BDGP 10, MNIST-USPS 25)")
    distill_epochs: int = Field(50, ge=1, description="epochs per view pattern in local_full_train")
    pretrain_epochs_per_round: int = Field(25, ge=1, description="reconstruction epochs per pretrain round")
    batch_size: int = Field(256, ge=2)
    mi_bins: int = Field(10, ge=2, description="bins per axis of the histogram MI")
    constraint_weight: float = Field(0.0, ge=0, description="beta of AFMCC's L_c (Table 3c: 0 = UC, 0.01 = HC)")
    lambda_: float = Field(0.3, ge=0, le=1, description="lambda of AFMCC's Q_tgt")
    carry_projection: bool = True  # upload the trained W with the full-pattern model

    @model_validator(mode="after")
    def _mi_pairs(self) -> "FMCSCConfig":
        if self.feature_dim != self.head_dim:
            raise ValueError(
                f"feature_dim ({self.feature_dim}) must equal head_dim ({self.head_dim}): the MI "
                "weights and the MOON term compare h with z_v element by element"
            )
        return self


# ---------------------------------------------------------------------------------------------
# The model


class Outputs(NamedTuple):
    x_hat: list[torch.Tensor]
    z: list[torch.Tensor]
    h: torch.Tensor
    r: list[torch.Tensor]


class PatternNetwork(nn.Module):
    """my_network.py ``Network`` (without ``centroids``) plus AFMCC's projection W."""

    def __init__(self, view_dims: tuple[int, ...], cfg: FMCSCConfig, n_clusters: int) -> None:
        super().__init__()
        d = cfg.feature_dim
        self.encoders = nn.ModuleList(mlp([dv, *cfg.hidden, d]) for dv in view_dims)
        self.decoders = nn.ModuleList(mlp([d, *reversed(cfg.hidden), dv]) for dv in view_dims)
        self.heads = nn.ModuleList(mlp([d, cfg.head_width, cfg.head_dim]) for _ in view_dims)
        self.fusion = mlp([len(view_dims) * d, cfg.head_width, cfg.head_dim])
        self.projection = nn.Linear(cfg.head_dim, n_clusters, bias=False)

    def forward(self, xs: list[torch.Tensor]) -> Outputs:
        z = [enc(x) for enc, x in zip(self.encoders, xs)]
        h = F.normalize(self.fusion(torch.cat(z, dim=1)), dim=1)
        return Outputs(
            [dec(zv) for dec, zv in zip(self.decoders, z)], z, h, [head(zv) for head, zv in zip(self.heads, z)]
        )


class FMCSCModel(nn.Module):
    """What one client stores and uploads: the upload weight per pattern (not trainable), one
    network per view pattern (the globals / this client's upload for each), its local model, and
    for the sequential round order the round's globals (``start``) and its place in the chain
    (``chain``: [round of this upload, 1 if the round ran sequentially]), neither trainable."""

    def __init__(self, view_dims: tuple[int, ...], cfg: FMCSCConfig, n_clusters: int) -> None:
        super().__init__()
        n_patterns = len(view_dims) + 1
        self.pattern_weights = nn.Parameter(torch.ones(n_patterns), requires_grad=False)
        self.patterns = nn.ModuleList(PatternNetwork(view_dims, cfg, n_clusters) for _ in range(n_patterns))
        self.local = PatternNetwork(view_dims, cfg, n_clusters)
        self.start = nn.ModuleList(PatternNetwork(view_dims, cfg, n_clusters) for _ in range(n_patterns))
        self.chain = nn.Parameter(torch.zeros(2), requires_grad=False)


@torch.no_grad()
def copy_network(dst: nn.Module, src: nn.Module) -> None:
    for a, b in zip(dst.parameters(), src.parameters()):
        a.copy_(b)


# ---------------------------------------------------------------------------------------------
# Losses and the MI weight (module-level so the tests can check them against hand computations)


def nt_xent(r: torch.Tensor, h: torch.Tensor, tau: float) -> torch.Tensor:
    """loss.py ``Loss.forward_feature``: rows [r; h], sim = raw dot product / tau, the positive of
    row i is its counterpart in the other half, every other row but itself a negative; CE
    summed over the 2N rows, divided by 2N."""
    n = r.shape[0]
    both = torch.cat([r, h], dim=0)
    sim = both @ both.T / tau
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=sim.device), float("-inf"))
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(sim.device)
    return F.cross_entropy(sim, positive, reduction="sum") / (2 * n)


def moon_loss(glob_h: torch.Tensor, h: torch.Tensor, z: torch.Tensor, tau: float) -> torch.Tensor:
    """loss.py ``Loss.forward_model``: logits [cos(glob_h, h), cos(h, z)] / tau, mean CE, label 0."""
    logits = torch.stack([F.cosine_similarity(glob_h, h, dim=-1), F.cosine_similarity(h, z, dim=-1)], dim=1) / tau
    return F.cross_entropy(logits, torch.zeros(h.shape[0], dtype=torch.long, device=h.device))


def histogram_mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 10) -> float:
    """metric.py ``mutual_information``: MI in bits of the 2-D histogram of the two flattened
    tensors (numpy.histogram2d, ``bins`` per axis), zero probabilities replaced by 1e-10."""
    joint, _, _ = np.histogram2d(a.detach().flatten().cpu().numpy(), b.detach().flatten().cpu().numpy(), bins=bins)
    joint = joint / joint.sum()
    pa, pb = joint.sum(axis=1), joint.sum(axis=0)
    for p in (joint, pa, pb):
        p[p == 0] = 1e-10
    return float(np.sum(joint * np.log2(joint / np.outer(pa, pb))))


def reconstruction(x: list[torch.Tensor], out: Outputs) -> torch.Tensor:
    """Sum over every view of ``nn.MSELoss`` (mean over samples and features)."""
    return sum(F.mse_loss(xr, xv) for xr, xv in zip(out.x_hat, x))


# ---------------------------------------------------------------------------------------------
# The method


class FMCSC(Learner):
    """FMCSC on the fedsim method contract (``fedsim.methods.base.Learner``)."""

    name: ClassVar[str] = "fmcsc"
    Config: ClassVar[type[BaseModel]] = FMCSCConfig
    evaluates_aggregate = True
    # main.py: ONE autoencoder pretrained through the clients in turn, then its valid(): k-means
    # on client 0, the others from its centres
    run_defaults: ClassVar[dict[str, Any]] = {"pretrain": {"enabled": True, "schedule": "chain"}, "evaluation": "fmcsc"}

    def __init__(self, config: FMCSCConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        if len(view_dims) < 2:
            raise ConfigError(f"fmcsc needs a multi-view dataset, got {len(view_dims)} view(s)")
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients

    # -- patterns ------------------------------------------------------------------------------
    @property
    def pattern_names(self) -> list[str]:
        return ["full"] + [f"v{v}" for v in range(len(self.view_dims))]

    def pattern_views(self, p: int) -> tuple[int, ...]:
        return tuple(range(len(self.view_dims))) if p == 0 else (p - 1,)

    def pattern_of(self, modalities: tuple[int, ...]) -> int:
        """Slot of a client's view pattern; FMCSC has only full and single-view clients."""
        if len(modalities) == len(self.view_dims):
            return 0
        if len(modalities) == 1:
            return 1 + modalities[0]
        raise ConfigError(
            f"fmcsc supports clients with all {len(self.view_dims)} views or one view, not views "
            f"{list(modalities)}; use an F:S client_ratio (e.g. '1:1') and no missing_rate"
        )

    def check_run(self, rounds: int, client_modalities: list[tuple[int, ...]]) -> None:
        """Every client's views are a pattern FMCSC has a slot for."""
        for modalities in set(client_modalities):
            self.pattern_of(modalities)

    def _inputs(self, data: LocalData, views: tuple[int, ...]) -> list[torch.Tensor]:
        """All V views of the client's samples, those outside ``views`` zero-filled (dataloader.py
        ``DatasetSplit``)."""
        ref = next(iter(data.views.values()))
        return [
            data.views[v] if v in views and v in data.views else ref.new_zeros(ref.shape[0], dv)
            for v, dv in enumerate(self.view_dims)
        ]

    def _epoch(self, n: int, generator: torch.Generator, device: torch.device) -> list[torch.Tensor]:
        if n <= self.cfg.batch_size:
            return [torch.arange(n, device=device)]
        return [b.to(device) for b in minibatches(n, self.cfg.batch_size, generator, min_size=2)]

    def _adam(self, net: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(net.parameters(), lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> FMCSCModel:
        """Every slot starts as a copy of ``local`` (as after pretraining), all weights 1."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = FMCSCModel(self.view_dims, self.cfg, self.n_clusters)
        for net in [*model.patterns, *model.start]:
            copy_network(net, model.local)
        return model

    def make_optimizer(self, model: FMCSCModel) -> torch.optim.Optimizer:
        """Pretraining's Adam (one per client, kept over its pretrain rounds); rounds use fresh ones."""
        return self._adam(model.local)

    # -- server step (aggregate_models2), run on the client ------------------------------------
    @torch.no_grad()
    def aggregate(
        self, model: FMCSCModel, data: LocalData, peers: list[PeerModel]
    ) -> tuple[torch.Tensor, dict[int, float]]:
        """The round's starting point. In parallel order every peer holds last round's upload and
        the globals are their weighted average. In sequential order (``round_order: sequential``,
        the code's loop over clients) a client after the first finds its predecessors' uploads of
        this round: it takes the round's globals from the ``start`` they carry, a full client
        continues the live full model (the previous full client's trained ``local``: the code
        trains ``glob_models[full]`` in place) and a single-view client the one shared single-view
        model (the code's ``local_models`` of every single-view client are one object)."""
        blocks = self._blocks(model)
        out = flat_parameters(model)
        tag, flag = blocks["chain"][0], blocks["chain"][0] + 1
        this_round = int(model.chain[0].item()) + 1
        rounds = [int(p.params[tag].item()) for p in peers]
        current = [p for p, r in zip(peers, rounds) if r == this_round]
        sequential = bool(current) or any(float(p.params[flag]) > 0 for p in peers)
        n_patterns = len(model.patterns)
        logged: dict[int, float] = {}
        if current:  # every upload of this round carries the round's globals
            for p in range(n_patterns):
                (s0, e0), (s1, e1) = blocks[f"patterns.{p}"], blocks[f"start.{p}"]
                out[s0:e0] = current[0].params[s1:e1].to(out.device)
        else:
            shared = self._latest_single(peers, rounds, this_round - 1) if sequential else None
            logged = self._weighted_globals(out, peers, blocks, data, shared)
        for p in range(n_patterns):
            (s0, e0), (s1, e1) = blocks[f"patterns.{p}"], blocks[f"start.{p}"]
            out[s1:e1] = out[s0:e0]
        if sequential:
            out[flag] = 1.0
            own, (ls, le) = self.pattern_of(data.modalities), blocks["local"]
            if own == 0:
                before = [p for p in current if self.pattern_of(p.modalities) == 0]
                if before:
                    s0, e0 = blocks["patterns.0"]
                    out[s0:e0] = max(before, key=lambda p: p.client_id).params[ls:le].to(out.device)
            else:
                latest = self._latest_single(peers, rounds, this_round) or self._latest_single(
                    peers, rounds, this_round - 1
                )
                if latest is not None:
                    out[ls:le] = latest.params[ls:le].to(out.device)
        return out, logged

    def _blocks(self, model: FMCSCModel) -> dict[str, tuple[int, int]]:
        """(start, end) in the flat vector of each network and of the two small vectors."""
        spans: dict[str, list[int]] = {}
        for name, s, e in parameter_segments(model):
            parts = name.split(".")
            key = ".".join(parts[:2]) if parts[0] in ("patterns", "start") else parts[0]
            spans.setdefault(key, [s, e])[1] = e
        return {k: (v[0], v[1]) for k, v in spans.items()}

    def _latest_single(self, peers: list[PeerModel], rounds: list[int], round_: int) -> PeerModel | None:
        """The single-view client that trained last in ``round_`` (sequential order: the highest id)."""
        done = [p for p, r in zip(peers, rounds) if r == round_ and self.pattern_of(p.modalities) != 0]
        return max(done, key=lambda p: p.client_id) if done else None

    def _weighted_globals(
        self,
        out: torch.Tensor,
        peers: list[PeerModel],
        blocks: dict[str, tuple[int, int]],
        data: LocalData,
        shared: PeerModel | None,
    ) -> dict[int, float]:
        """aggregate_models2: per pattern, every upload weighted by its MI weight / the weights'
        sum. ``shared``: in sequential order a single-view client's upload is the shared
        single-view model as the last of them left it (the code aggregates references to that one
        object), each with the weight it computed on its turn."""
        ws, _ = blocks["pattern_weights"]
        n_patterns = len(self.pattern_names)
        weights = torch.stack([p.params[ws : ws + n_patterns].to(out) for p in peers])  # (U, n_patterns)
        normalised = torch.zeros_like(weights)
        ls, le = blocks["local"]
        for p in range(n_patterns):
            w = weights[:, p].double()
            total = float(w.sum())
            if not np.isfinite(total) or total == 0.0:  # guard (ours): a plain mean
                valid = torch.isfinite(w) & (w != 0)
                w = valid.double() if bool(valid.any()) else torch.ones_like(w)
                total = float(w.sum())
            normalised[:, p] = (w / total).to(out.dtype)
            start, end = blocks[f"patterns.{p}"]
            acc = torch.zeros(end - start, dtype=out.dtype, device=out.device)
            for peer, wu in zip(peers, normalised[:, p].tolist()):
                if wu:
                    own_slot = shared is not None and p != 0 and self.pattern_of(peer.modalities) == p
                    src = shared.params[ls:le] if own_slot else peer.params[start:end]
                    acc.add_(src.to(out.device), alpha=wu)
            out[start:end] = acc
        own = self.pattern_of(data.modalities)
        return {peer.client_id: float(normalised[i, own]) for i, peer in enumerate(peers)}

    # -- local round ---------------------------------------------------------------------------
    def train_round(
        self,
        model: FMCSCModel,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext | None = None,
    ) -> dict[str, float]:
        context = context or RoundContext(1)
        own = self.pattern_of(data.modalities)
        model.train()
        if context.phase == "pretrain":
            out = self._pretrain(model, optimizer, data, generator)
        elif own == 0:
            out = self._full_round(model, data, generator)
        else:
            out = self._single_round(model, data, generator, own, context.round)
        if context.phase != "pretrain":
            with torch.no_grad():
                model.chain[0] = float(context.round)
        model.zero_grad(set_to_none=True)
        return out

    def _pretrain(
        self, model: FMCSCModel, optimizer: torch.optim.Optimizer, data: LocalData, generator: torch.Generator
    ) -> dict[str, float]:
        """main.py ``pretrain``: reconstruction of all V views (zero-filled ones included)."""
        losses, device = RoundLosses(), next(iter(data.views.values())).device
        xs = self._inputs(data, data.modalities)
        for _ in range(self.cfg.pretrain_epochs_per_round):
            for idx in self._epoch(data.n_samples, generator, device):
                x = [t[idx] for t in xs]
                loss = reconstruction(x, model.local(x))
                losses.step(optimizer, loss, {"loss_r": loss})
        for net in [*model.patterns, *model.start]:
            copy_network(net, model.local)
        model.pattern_weights.fill_(1.0)
        return losses.means()

    def _full_round(self, model: FMCSCModel, data: LocalData, generator: torch.Generator) -> dict[str, float]:
        cfg, device = self.cfg, next(iter(data.views.values())).device
        xs = self._inputs(data, data.modalities)
        local, losses = model.local, RoundLosses()
        copy_network(local, model.patterns[0])
        for _ in range(cfg.main_epochs):  # local_train: a fresh Adam per call
            adam = self._adam(local)
            for idx in self._epoch(data.n_samples, generator, device):
                x = [t[idx] for t in xs]
                out = local(x)
                terms = {
                    "loss_feature": sum(nt_xent(rv, out.h, cfg.tau_f) for rv in out.r),
                    "loss_r": reconstruction(x, out),
                }
                if cfg.constraint_weight > 0:
                    terms["loss_c"] = constraint_loss(out.h, local.projection, cfg.lambda_)
                total = terms["loss_feature"] + terms["loss_r"] + cfg.constraint_weight * terms.get("loss_c", 0.0)
                losses.step(adam, total, terms)
        with torch.no_grad():
            h_ref = local(xs).h
        result = losses.means()
        distill = RoundLosses()
        for p in range(len(model.patterns)):  # local_full_train
            net, views = model.patterns[p], self.pattern_views(p)
            masked = self._inputs(data, views)
            epochs = [self._epoch(data.n_samples, generator, device) for _ in range(cfg.distill_epochs)]
            last_idx = epochs[-1][-1]
            with torch.no_grad():  # the round-start P model on the batch of the last forward
                glob_h = net([t[last_idx] for t in masked]).h
            adam = self._adam(net)
            for batches in epochs:
                for idx in batches:
                    out = net([t[idx] for t in masked])
                    terms = {
                        "loss_r": reconstruction([t[idx] for t in xs], out),
                        "loss_h": F.mse_loss(out.h, h_ref[idx]),
                    }
                    distill.step(adam, terms["loss_r"] + terms["loss_h"], terms)
            if p == 0:
                weight = sum(histogram_mutual_information(out.h, rv, cfg.mi_bins) for rv in out.r)
                if cfg.carry_projection:
                    copy_network(net.projection, local.projection)
            else:
                weight = histogram_mutual_information(out.h, glob_h, cfg.mi_bins) - histogram_mutual_information(
                    out.h, out.z[views[0]], cfg.mi_bins
                )
            model.pattern_weights[p] = weight
        result.update({f"distill_{k}": v for k, v in distill.means().items()})
        return self._with_weights(model, result)

    def _single_round(
        self, model: FMCSCModel, data: LocalData, generator: torch.Generator, own: int, round_: int
    ) -> dict[str, float]:
        cfg, device = self.cfg, next(iter(data.views.values())).device
        v = own - 1
        xs = self._inputs(data, data.modalities)
        local, glob, losses = model.local, model.patterns[own], RoundLosses()
        for _ in range(cfg.main_epochs):
            adam = self._adam(local)
            for idx in self._epoch(data.n_samples, generator, device):
                x = [t[idx] for t in xs]
                with torch.no_grad():
                    glob_h = glob(x).h
                out = local(x)
                terms = {"loss_model": moon_loss(glob_h, out.h, out.z[v], cfg.tau_l), "loss_r": reconstruction(x, out)}
                losses.step(adam, terms["loss_model"] + terms["loss_r"], terms)
        with torch.no_grad():
            model.pattern_weights.zero_()
            if round_ >= 2:  # local_single_train: from the second round on
                local.eval()
                glob.eval()
                out, glob_h = local(xs), glob(xs).h
                model.pattern_weights[own] = histogram_mutual_information(
                    out.h, glob_h, cfg.mi_bins
                ) - histogram_mutual_information(out.h, out.z[v], cfg.mi_bins)
                copy_network(glob, local)
                model.train()
        return self._with_weights(model, losses.means())

    def _with_weights(self, model: FMCSCModel, losses: dict[str, float]) -> dict[str, float]:
        for name, w in zip(self.pattern_names, model.pattern_weights.tolist()):
            losses[f"mi_weight_{name}"] = float(w)
        return losses

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, model: FMCSCModel, data: LocalData) -> np.ndarray:
        """h of the client's own pattern's (aggregated) global model, main.py ``valid``."""
        net = model.patterns[self.pattern_of(data.modalities)]
        net.eval()
        return net(self._inputs(data, data.modalities)).h.cpu().numpy()

    def soft_assignments(self, model: FMCSCModel, data: LocalData) -> None:
        return None

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents (3 per training step). ``num_peers == 0`` is the
        runtime's pretraining cost; a full client adds one h_ref pass and the patterns'
        distillation; a single-view client one global forward per step and two MI passes."""
        cfg, own = self.cfg, self.pattern_of(data.modalities)
        if num_peers == 0:
            passes = 3 * cfg.pretrain_epochs_per_round
        elif own == 0:
            passes = 3 * cfg.main_epochs + 1 + (len(self.view_dims) + 1) * (3 * cfg.distill_epochs + 1)
        else:
            passes = 4 * cfg.main_epochs + 2
        return float(data.n_samples * passes)
