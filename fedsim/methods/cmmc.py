"""CMMC: Contrastive Multi-Modal Clustering (Xu, Tang, Ren, Zhu, He).

Paper: ../shared/papers/001_b81cb3a7ef114d66.txt (Sec. 3.1-3.3, Algorithm 1, Eqs. 1-15, Table 1,
Table 3, App. D). Implementation notes from ../shared/papers/PROTOCOLS.md ("CMMC").

What is implemented, equation by equation:

- Sec. 3.1 / App. D: one autoencoder per modality, encoder Input-500-500-2000-512 and decoder
  512-2000-500-500-Input, ReLU between layers, no activation on the latent z^m or the output.
  The feature contrastive module F (MLP 512-512-128) and the label contrastive module L (MLP
  512-512-K, softmax) sit on z^m and are shared by all modalities (one psi_F, one psi_L).
  h^m = F(z^m) is L2-normalised (PROTOCOLS.md); Eq. 2's cosine makes the losses blind to it,
  it only shapes the k-means input of Eq. 11.
- Eq. 1: L_r = sum_m sum_i ||x_i^m - D^m(E^m(x_i^m))||^2 over the batch (``reconstruction``).
- Eqs. 2-4: feature contrastive loss, positives h_i^m / h_i^n, negatives h_j^n (all j) and
  h_j^m (j != i), weight 1/(2N), summed over ordered pairs (m, n != m) and over m.
- Eqs. 8-9: the same contrast on the cluster columns Q_.j^m (weight 1/(2K), tau_L) plus the
  cluster-balance term sum_m sum_j s_j^m log s_j^m, s_j^m = mean_i Q_ij^m (Eq. 9 as printed:
  minimising it maximises the entropy of the cluster sizes).
- Eq. 10: L = L_lc + L_fc + L_r.
- Eqs. 11-13: k-means (scikit-learn, seeded) on the concatenated high-level features
  h_i = [h_i^1; ...; h_i^M] gives pseudo-labels p; for each modality, the Hungarian algorithm
  (scipy ``linear_sum_assignment``) on C^m = max(C~^m) - C~^m, C~^m_ij = #{n: argmax q_n^m = i,
  p_n = j}, relabels p into that modality's cluster ids: p^_i^m = k where A^m_ks = 1, s = p_i.
- Eq. 14: L_p = -sum_m sum_i log q^m_{i, p^_i^m} over the batch.
- Eq. 15: y_i = argmax_j (1/M) sum_m q_ij^m (``soft_assignments``).
- Algorithm 1 stages, one local round = one epoch over the client's data (batch 256, Adam
  lr 3e-4, App. D / PROTOCOLS.md): rounds 1..E_p pretrain the autoencoders on Eq. 1 (line 3);
  rounds E_p+1..E_p+E_c minimise Eq. 10 (line 5); the first fine-tuning round computes the
  pseudo-labels once (lines 6-7, from the client's own data, after that round's aggregation)
  and rounds E_p+E_c+1..E_p+E_c+E_f minimise Eq. 14, which updates only the encoders and
  psi_L (line 9: the other parts get no gradient). The stage comes from ``context.round`` alone.
  ``context.total_rounds`` must equal E_p + E_c + E_f (``ValueError`` otherwise); rounds past
  it (the ``group`` / ``sim_time`` stop rules) keep fine-tuning on the same pseudo-labels. The
  runtime's own pretraining phase (AFMCC Alg. 1, ``phase="pretrain"``) runs Eq. 1 epochs, i.e.
  extra stage-1 epochs on the designated client; the CMMC configs switch it off.
- Table 3 ablations (tune/grids/cmmc/table3.yaml): row (1) L_lc only
  (``use_feature_contrastive: false, use_reconstruction: false, use_finetune: false``), row (2)
  + L_fc, row (3) + L_r (``use_finetune: false``), row (4) + L_p (the default). Table 3 says
  the reconstruction is what row (3) adds and stage 1 is nothing but Eq. 1, so without L_r there
  is no autoencoder pretraining either; without L_p there is no fine-tuning. A stage left with
  nothing to minimise keeps its rounds but they are idle (the model is unchanged, the losses
  report ``idle: 1``): every variant then has the same ``rounds`` and one grid serves every
  dataset. L_lc (with its balance term) is in every variant, as in Table 3.
  Sec. 5.1 does not say how long the ablated variants train. ``ablated_stages="idle"`` (default)
  is the reading above: row (1) on BDGP trains E_c = 10 epochs in all. ``"contrastive"`` is the
  other reading: a stage left without its loss trains the variant's Eq. 10 terms instead, so every
  variant trains E_p + E_c + E_f epochs (row (3) then contrasts for E_c + E_f). Neither reproduces
  both rows on BDGP (3 seeds): "idle" gives 44.7 / 75.0 ACC for rows (1) / (2), "contrastive"
  76.8 / 82.3, paper 62.4 / 81.2, with seed spreads of 13-20 points (reports/findings/cmmc_table3*.md).

Where the paper is ambiguous or looks wrong, the printed version is the default and the
alternative is a switch:

- Eq. 1 sums the squared error over samples and features, so within a 256-sample batch L_r is
  hundreds of times larger than L_fc and L_lc (whose 1/(2N) and 1/(2K) make them O(log N)).
  ``reconstruction="printed"`` (default) or ``"mse"``: the released code's lineage (MFLVC) uses
  ``nn.MSELoss`` per modality, a mean over samples and features. Stages 1 and 3 train a single
  term with Adam, which is nearly scale invariant, so the reading only matters in stage 2.
- Eq. 14 sums over samples; the CE here does the same (Adam makes the scale immaterial).
- The last batch of an epoch is kept even when smaller than 256: federated clients hold ~208
  samples, and dropping it would leave them no step at all.

Federated use (no paper does this; fedsim's own extension):

- Every client holds the full architecture (all modalities' autoencoders, both heads) and
  trains the parts its data reaches. ``aggregate`` is modality-aware FedAvg
  (``fedsim.methods.base.ServerAverage``): encoder m and decoder m are averaged over
  the peers that hold modality m (weights by sample count), the shared heads psi_F and psi_L
  over all peers. Aggregation happens at the start of every round, in every stage.
- Each client walks through the stages by its own round counter; in ``virtual``/``async`` mode
  with unequal speeds, fast clients reach fine-tuning first and average with peers still in
  contrastive learning. The pseudo-labels are computed from the client's own samples only.
- A one-modality client: the contrastive sums over n != m in Eqs. 3 and 8 are empty, so in
  stage 2 it trains L_r of its autoencoder and the balance term of Eq. 9 (its encoder and
  psi_L); psi_F gets no gradient from it. In stage 3 it fine-tunes on pseudo-labels from k-means
  on its single view's h, matched to its own predictions; Eq. 15 is its own q. An M-client
  (2..M-1 modalities) runs Eqs. 3-15 over the modalities it has.
- ``embed`` returns the concatenation of Eq. 11, whose width is (client's modalities) x 128: in
  a federation whose clients hold different numbers of modalities, the FMCSC evaluation (client
  0's centres reused on every client) needs one width, so use ``evaluation: argmax`` (Eq. 15,
  the paper's prediction) or ``embed="mean"`` (mean of the clients' h^m, always 128-d).
- Eq. 13 matches each client's k-means labels to that client's own predictions. The shared
  psi_L makes the clients' cluster ids common only as far as their predictions are good: where
  a client's predictions are near-collapsed its matching is arbitrary, clients then fine-tune
  psi_L towards conflicting ids, and the average can slide back towards uniform soft labels
  (seen on a tiny 4-client synthetic federation, F/S 1:1: mean client ACC 0.59 at the end of
  contrastive learning, 0.33, one cluster, after fine-tuning).
- Pseudo-labels live in the method instance; if Ray restarts the actor during fine-tuning they
  are recomputed from the model at that round (a documented deviation; optimiser state is lost
  too, as for every method).
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans
from torch import nn

from fedsim.errors import ConfigError
from fedsim.methods.base import Learner, LocalData, RoundContext, RoundLosses, ServerAverage
from fedsim.methods.blocks import mlp, modality_index

Stage = Literal["pretrain", "contrastive", "finetune"]


class CMMCConfig(BaseModel):
    """CMMC hyper-parameters; defaults are App. D with BDGP's stage epochs (E_p 200, E_c 10, E_f 30)."""

    model_config = ConfigDict(extra="forbid")

    encoder_hidden: list[int] = Field(default_factory=lambda: [500, 500, 2000], description="encoder widths before z")
    latent_dim: int = Field(512, ge=1, description="L, width of z^m")
    head_hidden: int = Field(512, ge=1, description="hidden width of both contrastive modules")
    feature_dim: int = Field(128, ge=1, description="H, width of h^m")
    tau_f: float = Field(0.5, gt=0, description="tau_F of Eq. 3")
    tau_l: float = Field(1.0, gt=0, description="tau_L of Eq. 8")
    lr: float = Field(3e-4, gt=0)
    batch_size: int = Field(256, ge=1)
    pretrain_epochs: int = Field(200, ge=0, description="E_p (Alg. 1 line 2)")
    contrastive_epochs: int = Field(
        10, ge=0, description="E_c (Alg. 1 line 4): BDGP 10, MNIST-USPS/CCV/Caltech 50, Fashion 100"
    )
    finetune_epochs: int = Field(30, ge=0, description="E_f (Alg. 1 line 8); 0 = Table 3 row (3)")
    use_feature_contrastive: bool = True  # False = Table 3 row (1)
    use_reconstruction: bool = True  # False = Table 3 rows (1), (2): no L_r, stage 1 idle
    use_finetune: bool = True  # False = Table 3 rows (1)-(3): no L_p, stage 3 idle
    ablated_stages: Literal["idle", "contrastive"] = Field(
        "idle",
        description="a stage whose loss an ablation removed: idle (default) or trains the remaining Eq. 10 terms",
    )
    reconstruction: Literal["printed", "mse"] = "printed"
    kmeans_n_init: int = Field(10, ge=1, description="k-means restarts for the pseudo-labels (Eq. 11)")
    embed: Literal["concat", "mean"] = "concat"

    @property
    def total_epochs(self) -> int:
        return self.pretrain_epochs + self.contrastive_epochs + self.finetune_epochs


# ---------------------------------------------------------------------------------------------
# The model


class CMMCNetwork(nn.Module):
    """Fig. 1 / App. D: per-modality autoencoders E^m, D^m and the shared modules F (psi_F), L (psi_L)."""

    def __init__(
        self,
        view_dims: tuple[int, ...],
        encoder_hidden: list[int],
        latent_dim: int,
        head_hidden: int,
        feature_dim: int,
        n_clusters: int,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(mlp([dv, *encoder_hidden, latent_dim]) for dv in view_dims)
        self.decoders = nn.ModuleList(mlp([latent_dim, *reversed(encoder_hidden), dv]) for dv in view_dims)
        self.feature_head = mlp([latent_dim, head_hidden, feature_dim])
        self.label_head = mlp([latent_dim, head_hidden, n_clusters])  # logits; softmax gives Q^m

    def encode(self, views: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """z^m = E^m(x^m)."""
        return {v: self.encoders[v](x) for v, x in views.items()}

    def features(self, z: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """h^m = F(z^m), L2-normalised."""
        return {v: F.normalize(self.feature_head(zv), dim=1) for v, zv in z.items()}

    def label_logits(self, z: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Pre-softmax outputs of L(z^m); softmax gives the soft labels Q^m."""
        return {v: self.label_head(zv) for v, zv in z.items()}

    def reconstruct(self, z: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        return {v: self.decoders[v](zv) for v, zv in z.items()}


def modality_owners(param_name: str) -> tuple[int, ...]:
    """``ServerAverage`` owners: modality m's encoder and decoder count from clients holding m,
    the shared modules from every client."""
    v = modality_of(param_name)
    return () if v is None else (v,)


def modality_of(param_name: str) -> int | None:
    """Modality of a parameter for modality-aware FedAvg: ``encoders.m.*`` / ``decoders.m.*``
    belong to modality m, the shared contrastive modules to none."""
    return modality_index(param_name, ("encoders", "decoders"))


# ---------------------------------------------------------------------------------------------
# Losses (module-level so the tests can check them against hand computations)


def reconstruction_loss(
    x: dict[int, torch.Tensor], x_hat: dict[int, torch.Tensor], form: str = "printed"
) -> torch.Tensor:
    """Eq. 1: sum_m sum_i ||x_i^m - x_hat_i^m||^2 over the batch; ``form="mse"``: sum_m mean((x^m - x_hat^m)^2)."""
    if form == "mse":
        return sum(F.mse_loss(x_hat[v], x[v]) for v in x)
    return sum(((x[v] - x_hat[v]) ** 2).sum() for v in x)


def cross_modal_contrastive(reps: dict[int, torch.Tensor], tau: float) -> torch.Tensor:
    """The contrast shared by Eqs. 3-4 and the first part of Eq. 9, on rows of ``reps[m]`` (R, D).

    sum_m -(1/(2R)) sum_{n != m} sum_i log( e^{d(r_i^m, r_i^n)/tau} /
        [ sum_j e^{d(r_i^m, r_j^n)/tau} + sum_{j != i} e^{d(r_i^m, r_j^m)/tau} ] )
    with d the cosine similarity (Eq. 2). Eq. 3: rows are samples h_i^m (R = N, tau_F); Eq. 8:
    rows are cluster columns Q_.j^m (R = K, tau_L). Zero for a single modality (no n != m).
    """
    keys = sorted(reps)
    normed = {v: F.normalize(reps[v], dim=1) for v in keys}
    first = normed[keys[0]]
    rows = first.shape[0]
    total = first.new_zeros(())
    self_mask = torch.eye(rows, dtype=torch.bool, device=first.device)
    for m in keys:
        within = (normed[m] @ normed[m].T / tau).masked_fill(self_mask, float("-inf"))  # j != i
        for n in keys:
            if n == m:
                continue
            across = normed[m] @ normed[n].T / tau  # d(r_i^m, r_j^n) / tau
            log_denominator = torch.logsumexp(torch.cat([across, within], dim=1), dim=1)
            total = total - (across.diagonal() - log_denominator).sum() / (2 * rows)
    return total


def feature_contrastive_loss(h: dict[int, torch.Tensor], tau_f: float) -> torch.Tensor:
    """Eqs. 3-4: L_fc = sum_m L_fc^m on the high-level features h^m (N, H)."""
    return cross_modal_contrastive(h, tau_f)


def label_contrastive_loss(q: dict[int, torch.Tensor], tau_l: float) -> torch.Tensor:
    """Eq. 8 summed over m (first part of Eq. 9), on the cluster columns of the soft labels Q^m (N, K)."""
    return cross_modal_contrastive({v: qv.T for v, qv in q.items()}, tau_l)


def cluster_balance_term(q: dict[int, torch.Tensor]) -> torch.Tensor:
    """Eq. 9, second part: sum_m sum_j s_j^m log s_j^m with s_j^m = (1/N) sum_i Q_ij^m."""
    total = next(iter(q.values())).new_zeros(())
    for qv in q.values():
        s = qv.mean(dim=0)
        total = total + (s * torch.log(s.clamp_min(1e-12))).sum()
    return total


def pseudo_label_cross_entropy(log_q: dict[int, torch.Tensor], targets: dict[int, torch.Tensor]) -> torch.Tensor:
    """Eq. 14: L_p = -sum_m sum_i sum_j p^_ij^m log q_ij^m with one-hot p^ given as class ids."""
    return sum(-lq.gather(1, targets[v].view(-1, 1)).sum() for v, lq in log_q.items())


def match_pseudo_labels(predictions: np.ndarray, pseudo: np.ndarray, n_clusters: int) -> np.ndarray:
    """Eq. 13: relabel the k-means pseudo-labels p into the ids of one modality's predictions.

    C~_ij = #{n: predictions_n = i, pseudo_n = j}; C = max(C~) - C~; the Hungarian algorithm
    gives the permutation A minimising sum C_ij A_ij; sample i's modified label is the k with
    A_ks = 1 for s = pseudo_i."""
    counts = np.zeros((n_clusters, n_clusters), dtype=np.int64)
    np.add.at(counts, (np.asarray(predictions), np.asarray(pseudo)), 1)
    cost = counts.max() - counts
    rows, cols = linear_sum_assignment(cost)
    relabel = np.empty(n_clusters, dtype=np.int64)
    relabel[cols] = rows  # A[k, s] = 1 -> pseudo id s becomes prediction id k
    return relabel[np.asarray(pseudo)]


# ---------------------------------------------------------------------------------------------
# The method


class CMMC(Learner):
    """CMMC on the fedsim method contract (``fedsim.methods.base.Learner``)."""

    name: ClassVar[str] = "cmmc"
    Config: ClassVar[type[BaseModel]] = CMMCConfig
    # Eq. 15's prediction; no run-level pretraining: stage 1 (pretrain_epochs) pretrains the
    # autoencoders inside the federation's own rounds
    run_defaults: ClassVar[dict[str, Any]] = {"evaluation": "argmax"}
    metric_names: ClassVar[tuple[str, ...]] = ("selection_loss",)

    def __init__(self, config: CMMCConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_clusters = n_clusters
        self.num_clients = num_clients
        # Eq. 13's modified pseudo-labels per modality, set at the first fine-tuning round.
        self.pseudo_targets: dict[int, torch.Tensor] | None = None

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> CMMCNetwork:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return CMMCNetwork(
                self.view_dims,
                list(self.cfg.encoder_hidden),
                self.cfg.latent_dim,
                self.cfg.head_hidden,
                self.cfg.feature_dim,
                self.n_clusters,
            )

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.cfg.lr)

    @torch.no_grad()
    def server_average(self, model: nn.Module) -> ServerAverage:
        """Modality-aware FedAvg (see the module docstring); one peer (centralised) = no change."""
        return ServerAverage.of(model, modality_owners)

    # -- stages (Algorithm 1) -------------------------------------------------------------------
    def check_run(self, rounds: int, client_modalities: list[tuple[int, ...]]) -> None:
        """The run's ``rounds`` are the stages' epochs (checked by the driver before Ray starts)."""
        if rounds != self.cfg.total_epochs:
            raise ConfigError(
                f"cmmc trains {self.cfg.pretrain_epochs} + {self.cfg.contrastive_epochs} + {self.cfg.finetune_epochs} "
                f"rounds (cmmc.pretrain_epochs, contrastive_epochs, finetune_epochs) but rounds={rounds}; "
                f"set rounds={self.cfg.total_epochs} or change the stage epochs"
            )

    def stage(self, context: RoundContext) -> Stage:
        """Alg. 1: rounds 1..E_p pretrain, the next E_c contrast, the rest fine-tune."""
        if context.phase == "pretrain":
            return "pretrain"
        if context.round <= self.cfg.pretrain_epochs:
            return "pretrain"
        if context.round <= self.cfg.pretrain_epochs + self.cfg.contrastive_epochs:
            return "contrastive"
        return "finetune"

    # -- losses on one batch ---------------------------------------------------------------------
    def pretrain_loss(
        self, model: CMMCNetwork, x: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Alg. 1 line 3: Eq. 1."""
        loss_r = reconstruction_loss(x, model.reconstruct(model.encode(x)), self.cfg.reconstruction)
        return loss_r, {"loss_r": loss_r}

    def contrastive_loss(
        self, model: CMMCNetwork, x: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Alg. 1 line 5: Eq. 10, L = L_lc + L_fc + L_r, with the Table 3 switches."""
        z = model.encode(x)
        q = {v: torch.softmax(lg, dim=1) for v, lg in model.label_logits(z).items()}
        terms = {"loss_lc_contrast": label_contrastive_loss(q, self.cfg.tau_l), "loss_balance": cluster_balance_term(q)}
        terms["loss_lc"] = terms["loss_lc_contrast"] + terms["loss_balance"]  # Eq. 9
        total = terms["loss_lc"]
        if self.cfg.use_feature_contrastive:
            terms["loss_fc"] = feature_contrastive_loss(model.features(z), self.cfg.tau_f)
            total = total + terms["loss_fc"]
        if self.cfg.use_reconstruction:
            terms["loss_r"] = reconstruction_loss(x, model.reconstruct(z), self.cfg.reconstruction)
            total = total + terms["loss_r"]
        return total, terms

    def finetune_loss(
        self, model: CMMCNetwork, x: dict[int, torch.Tensor], targets: dict[int, torch.Tensor]
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Alg. 1 line 9: Eq. 14 (gradients reach only the encoders and psi_L)."""
        log_q = {v: torch.log_softmax(lg, dim=1) for v, lg in model.label_logits(model.encode(x)).items()}
        loss_p = pseudo_label_cross_entropy(log_q, targets)
        return loss_p, {"loss_p": loss_p}

    def loss(
        self,
        model: CMMCNetwork,
        x: dict[int, torch.Tensor],
        stage: Stage,
        targets: dict[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if stage == "pretrain":
            return self.pretrain_loss(model, x)
        if stage == "contrastive":
            return self.contrastive_loss(model, x)
        if targets is None:
            raise ValueError("fine-tuning needs the pseudo-labels of Eq. 13")
        return self.finetune_loss(model, x, targets)

    # -- pseudo-labels (Eqs. 11-13) -----------------------------------------------------------------
    @torch.no_grad()
    def compute_pseudo_targets(self, model: CMMCNetwork, data: LocalData, seed: int) -> dict[int, torch.Tensor]:
        """k-means on [h^1; ...; h^M] (Eqs. 11-12), matched to each modality's argmax (Eq. 13)."""
        model.eval()
        h, q = self._outputs(model, data)
        concatenated = np.concatenate([h[v] for v in data.modalities], axis=1)
        kmeans = KMeans(n_clusters=self.n_clusters, n_init=self.cfg.kmeans_n_init, random_state=seed)
        pseudo = kmeans.fit_predict(concatenated)
        device = next(iter(data.views.values())).device
        return {
            v: torch.from_numpy(match_pseudo_labels(q[v].argmax(axis=1), pseudo, self.n_clusters)).to(device)
            for v in data.modalities
        }

    # -- one local round -------------------------------------------------------------------------
    def train_round(
        self,
        model: CMMCNetwork,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext,
    ) -> dict[str, float]:
        stage = self.stage(context)
        code = float(("pretrain", "contrastive", "finetune").index(stage))  # 0 / 1 / 2, for the logs
        if (stage == "pretrain" and not self.cfg.use_reconstruction) or (
            stage == "finetune" and not self.cfg.use_finetune
        ):
            if self.cfg.ablated_stages == "idle":
                return {"stage": code, "idle": 1.0}  # Table 3 ablation: this stage has no loss left
            stage, code = "contrastive", 1.0  # the other reading: spend the stage on what is left
        targets = None
        if stage == "finetune":
            if self.pseudo_targets is None:  # Alg. 1 lines 6-7, once, from this round's start
                seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
                self.pseudo_targets = self.compute_pseudo_targets(model, data, seed)
            targets = self.pseudo_targets
        model.train()
        n = data.n_samples
        device = next(iter(data.views.values())).device
        order = torch.randperm(n, generator=generator).to(device)
        losses = RoundLosses()
        for start in range(0, n, self.cfg.batch_size):
            idx = order[start : start + self.cfg.batch_size]
            x = {v: t[idx] for v, t in data.views.items()}
            batch_targets = None if targets is None else {v: t[idx] for v, t in targets.items()}
            total, terms = self.loss(model, x, stage, batch_targets)
            losses.step(optimizer, total, terms)
        out = losses.means()
        out["stage"] = code
        return out

    # -- evaluation -----------------------------------------------------------------------------
    @torch.no_grad()
    def _outputs(
        self, model: CMMCNetwork, data: LocalData, chunk: int = 2048
    ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray]]:
        """h^m and Q^m of every local sample, in chunks to bound memory."""
        model.eval()
        h: dict[int, list[np.ndarray]] = {v: [] for v in data.modalities}
        q: dict[int, list[np.ndarray]] = {v: [] for v in data.modalities}
        for start in range(0, data.n_samples, chunk):
            z = model.encode({v: t[start : start + chunk] for v, t in data.views.items()})
            for v, hv in model.features(z).items():
                h[v].append(hv.cpu().numpy())
            for v, lg in model.label_logits(z).items():
                q[v].append(torch.softmax(lg, dim=1).cpu().numpy())
        return ({v: np.concatenate(a) for v, a in h.items()}, {v: np.concatenate(a) for v, a in q.items()})

    def embed(self, model: CMMCNetwork, data: LocalData) -> np.ndarray:
        """Eq. 11's input h_i = [h_i^1; ...; h_i^M] (``embed="mean"``: mean_m h_i^m, see the docstring)."""
        h, _ = self._outputs(model, data)
        if self.cfg.embed == "mean":
            return np.mean([h[v] for v in data.modalities], axis=0)
        return np.concatenate([h[v] for v in data.modalities], axis=1)

    def soft_assignments(self, model: CMMCNetwork, data: LocalData) -> np.ndarray:
        """Eq. 15: (1/M) sum_m q_i^m over the client's modalities."""
        _, q = self._outputs(model, data)
        return np.mean([q[v] for v in data.modalities], axis=0)

    @torch.no_grad()
    def selection_loss(self, model: CMMCNetwork, data: LocalData) -> float:
        """Label-free restart score (lower is better): Eq. 10 averaged over fixed-order batches of
        the client's data, the objective the contrastive stage minimises."""
        model.eval()
        total, batches = 0.0, 0
        for start in range(0, data.n_samples, self.cfg.batch_size):
            x = {v: t[start : start + self.cfg.batch_size] for v, t in data.views.items()}
            total += float(self.contrastive_loss(model, x)[0])
            batches += 1
        return total / max(batches, 1)

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents: one epoch, forward + backward = 3 passes per sample
        (the once-only pseudo-label pass and FedAvg, which needs no forward pass, are not counted)."""
        return float(3 * data.n_samples)
