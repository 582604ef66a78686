"""FedRecon: missing-modality reconstruction in multimodal federated learning.

Paper: ../shared/papers/002_a151183d84f2fadb.txt (Liu et al. 2025, "FedRecon"), Sections 3-4,
Algorithm 1, Sec. 5.1 (setup) and 5.3 (ablations). Notes: PROTOCOLS.md, section "FedRecon".
The task model, the attention fusion and the baselines live in ``fedsim.methods.supervised``.

What is implemented, equation by equation:

- Sec. 3, Eq. 1: the task model F = H(fusion(E_m(X_m))) trained with cross-entropy on the
  client's labels (``supervised.MultimodalClassifier``).
- Sec. 4.1, Eq. 3: one VAE G_m per modality (encoder -> (mu, log sigma^2), decoder), trained on
  the negative ELBO -E_q[log p(X_m|z)] + KL(q(z|X_m) || N(0, I)) (:func:`vae_loss`), one
  reparameterised sample per input.
- Sec. 4.2, Eqs. 4-5: mapping networks T_{n,m} (latent -> 512 -> 512 -> 512 -> latent, LayerNorm
  and GELU, PROTOCOLS.md) that carry modality m's latent to modality n's decoder; trained in a
  second stage with both VAEs frozen on L_match = alpha KL(T_{n,m}(z_m) || z_n) + L_recon
  (:func:`mapping_loss`), L_recon = -log p_{theta_n}(X_n | T_{n,m}(z_m)) (the cross term of Eq. 4).
  Only a client holding both n and m can train T_{n,m}.
- Sec. 4.2, Eq. 6: attention fusion u = tanh(W h + b), a = softmax(u^T c), f* = sum a_i h_i over
  the entries h_i (``supervised.attention_fusion``).
- Sec. 4.3, global generator freezing strategy (GGFS): at the start of every round the client
  keeps a frozen copy G~, T~ of the global generator next to the one it trains; a missing
  modality is reconstructed by both and both reconstructions enter the fusion, their attention
  weight lowered (Fig. 3: "reduce the weight of synthetic features during the attention fusion").
- Alg. 1: per round, (0) start from the averaged generators, mappings and task model (frozen
  copies := the averages), Stage 1: L1 epochs of Eq. 3 on the client's modalities; Stage 2:
  freeze the VAEs, L2 epochs of Eq. 5; Stage 3: L3 epochs of the task model on real and
  reconstructed modalities (generators not updated). Server: average G_m, T_{n,m} and phi.

Readings where the paper is ambiguous (printed version default, alternative as a switch):

- Eq. 3's likelihood p_theta(X|z) is not given: ``likelihood="gaussian"`` (unit variance,
  -log p = ||x - x_hat||^2 / 2 up to a constant, default) or ``"bernoulli"`` (logits, for pixel
  data in [0, 1]: the configs of mnist_usps and hdigit use it).
- Eq. 4 takes the expectation over q(z_m|X_m): the mapping is trained on a reparameterised
  sample (``mapping_input="sample"``, default). PROTOCOLS.md says the reference code feeds the
  posterior means: ``mapping_input="mean"``. Generation (stage 3, prediction, coherence) always
  maps the posterior mean.
- Eq. 5's KL(T_{n,m}(z_m) || z_n) compares a point with a distribution. Read as the KL between
  Gaussians: the mapped distribution N(T_{n,m}(z_m), diag sigma_m^2) (the source posterior's
  variance carried along) against the frozen posterior q(z_n|X_n) = N(mu_n, diag sigma_n^2).
  ``kl_alpha`` is Eq. 5's alpha in {0, 1}; 0 by default ("optionally apply", Sec. 4.2).
- Stage 1 trains every held modality's VAE on Eq. 3; the batch loss is the mean over the
  client's modalities (Eq. 4's 1/M). Stage 2's loss is the mean over the ordered pairs (n, m).
- Eq. 6's h = [f_{i,m}; f'_{i,m}]: read as one attention over all of a sample's entries: the
  real features E_m(X_m) of every held modality, and for every missing modality n the features
  E_n(X^_n) of each reconstruction (local generator; with GGFS also the frozen global one).
  A missing modality with several held sources is reconstructed as the mean of the decodings
  from each source. "Reduce the weight of synthetic features" is read as multiplying each
  synthetic entry's unnormalised attention weight by ``synthetic_weight`` (added to its score as
  a log): default 1 / (number of generators), so that with GGFS the two reconstructions of a
  modality together weigh what one entry would.
- Alg. 1 averages with 1/K (``weighting="uniform"``, default; ``"samples"`` for FedAvg's n_k
  weights). Fig. 2b: clients submit "according to its modalities": G_m is averaged over the
  clients holding m and T_{n,m} over those holding n and m (clients that cannot train a part
  do not dilute it). The task model phi is averaged over all K clients (Alg. 1 line 15; every
  client trains every E_m, on real or reconstructed inputs): ``encoder_aggregation="all"``.
- The frozen copies are part of the model's parameters (requires_grad False) so that the
  runtime's copy of a client's model, which the evaluation loads, carries them: a client is
  evaluated with the generators it would use. They are not averaged; aggregation overwrites
  them with the new global generator.

Ablations (Sec. 5.3 "MMR" and "GGFS"): ``use_mapping=False`` skips stage 2 and decodes modality
n from z_m directly with G_n's decoder; ``use_global_generator=False`` reconstructs from the
local generator only.

Generation quality (``extra_metrics``, at the final evaluation, per client, on its test split):
cross-modal coherence (MMVAE+ / Shi et al. 2019) of generating modality n from modality m is the
accuracy, against the true labels, of a classifier for modality n applied to the generated
samples. That classifier is scikit-learn's ``LogisticRegression`` trained on the client's own
*real* modality-n training samples (the papers use a classifier pre-trained on the whole
dataset; a client only has its own data), so coherence is computed on clients holding both n
and m whose training split has at least two classes. ``coherence_real`` is that classifier's
accuracy on the real test modality n (the ceiling). Reported: ``coherence`` (the configured
generator: mapping on/off, GGFS on/off; GGFS combines the two generations by their mean),
``coherence_{map|direct}_{local|frozen|both}`` for all six generator variants of the same
trained model, ``recon_mse`` (self-reconstruction of the held modalities) and ``cross_mse``
(generated modality n vs. the real paired X_n). Keys a client cannot compute are left out.
"""

from __future__ import annotations

import math
import warnings
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field
from torch import nn

from fedsim.methods.base import (
    Learner,
    LocalData,
    RoundContext,
    ServerAverage,
    minibatches,
    parameter_segments,
)
from fedsim.methods.blocks import kl_to_standard_normal_logvar, mlp, reparameterise_logvar
from fedsim.methods.supervised import (
    MultimodalClassifier,
    SupervisedConfig,
    make_local_optimizer,
    reset_optimizer,
    task_loss,
)


class FedReconConfig(SupervisedConfig):
    """FedRecon hyper-parameters. Task-model fields are ``SupervisedConfig``'s (shared with the
    baselines); ``local_epochs`` is Alg. 1's L3."""

    weighting: Literal["samples", "uniform"] = "uniform"  # Alg. 1: 1/K
    encoder_aggregation: Literal["holders", "all"] = "all"  # Alg. 1 line 15: phi over all K
    latent_dim: int = Field(16, ge=1, description="VAE latent size (every modality the same)")
    vae_hidden: list[int] = Field(default_factory=lambda: [256], description="VAE encoder hidden widths")
    likelihood: Literal["gaussian", "bernoulli"] = "gaussian"
    vae_lr: float = Field(1e-3, gt=0)
    vae_epochs: int = Field(1, ge=0, description="L1")
    mapping_hidden: list[int] = Field(default_factory=lambda: [512, 512, 512], description="T_{n,m} widths")
    mapping_lr: float = Field(1e-3, gt=0)
    mapping_epochs: int = Field(1, ge=0, description="L2")
    mapping_input: Literal["sample", "mean"] = "sample"
    kl_alpha: Literal[0, 1] = 0  # Eq. 5's alpha
    use_mapping: bool = True  # False: ablation "without MMR"
    use_global_generator: bool = True  # False: ablation "without GGFS"
    synthetic_weight: float | None = Field(None, gt=0, description="None: 1 / number of generators")
    coherence_max_iter: int = Field(300, ge=1, description="LogisticRegression iterations")


# ---------------------------------------------------------------------------------------------
# The generator: per-modality VAEs (Eq. 3) and the mappings T_{n,m} (Eq. 4)


class ModalityVAE(nn.Module):
    """G_m: encoder x -> (mu, log sigma^2), decoder z -> likelihood parameters of x."""

    def __init__(self, input_dim: int, hidden: list[int], latent_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(mlp([input_dim, *hidden]), nn.ReLU())
        self.mu = nn.Linear(hidden[-1] if hidden else input_dim, latent_dim)
        self.logvar = nn.Linear(hidden[-1] if hidden else input_dim, latent_dim)
        self.decoder = mlp([latent_dim, *reversed(hidden), input_dim])

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.body(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def mapping_network(latent_dim: int, hidden: list[int]) -> nn.Sequential:
    """T_{n,m}: latent -> hidden... -> latent, each hidden layer Linear, LayerNorm, GELU (PROTOCOLS.md)."""
    layers: list[nn.Module] = []
    width = latent_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.LayerNorm(h), nn.GELU()]
        width = h
    layers.append(nn.Linear(width, latent_dim))
    return nn.Sequential(*layers)


def pair_key(n: int, m: int) -> str:
    """Key of T_{n,m} (target n, source m) in the ModuleDict."""
    return f"{n}_{m}"


class Generator(nn.Module):
    """The MVAE of one client: a VAE per modality and a mapping for every ordered pair."""

    def __init__(
        self, view_dims: tuple[int, ...], hidden: list[int], latent_dim: int, mapping_hidden: list[int]
    ) -> None:
        super().__init__()
        self.vaes = nn.ModuleList(ModalityVAE(d, hidden, latent_dim) for d in view_dims)
        self.mappings = nn.ModuleDict(
            {
                pair_key(n, m): mapping_network(latent_dim, mapping_hidden)
                for n in range(len(view_dims))
                for m in range(len(view_dims))
                if n != m
            }
        )

    def mapping(self, n: int, m: int) -> nn.Module:
        return self.mappings[pair_key(n, m)]


class FedReconModel(nn.Module):
    """phi (task model), the local generator G_k / T_k, and the frozen global copy G~ / T~."""

    def __init__(self, view_dims: tuple[int, ...], cfg: FedReconConfig, n_classes: int) -> None:
        super().__init__()
        self.task = MultimodalClassifier(
            view_dims, list(cfg.hidden), cfg.feature_dim, cfg.attention_dim, cfg.head_hidden, n_classes
        )
        self.generator = Generator(view_dims, list(cfg.vae_hidden), cfg.latent_dim, list(cfg.mapping_hidden))
        self.frozen = Generator(view_dims, list(cfg.vae_hidden), cfg.latent_dim, list(cfg.mapping_hidden))
        self.frozen.load_state_dict(self.generator.state_dict())
        self.frozen.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Loss terms (module level so the tests can check them against hand computations)


def gaussian_kl(mu_p: torch.Tensor, logvar_p: torch.Tensor, mu_q: torch.Tensor, logvar_q: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_p, e^logvar_p) || N(mu_q, e^logvar_q)) for diagonal Gaussians:
    1/2 sum_j (logvar_q - logvar_p + (e^logvar_p + (mu_p - mu_q)^2) / e^logvar_q - 1), batch mean."""
    per_dim = logvar_q - logvar_p + (logvar_p.exp() + (mu_p - mu_q) ** 2) / logvar_q.exp() - 1
    return (0.5 * per_dim.sum(dim=1)).mean()


def negative_log_likelihood(x: torch.Tensor, decoded: torch.Tensor, likelihood: str) -> torch.Tensor:
    """-log p_theta(x | z), summed over features, averaged over the batch.

    ``gaussian``: unit variance, 1/2 ||x - decoded||^2 (the constant d/2 log 2 pi dropped);
    ``bernoulli``: ``decoded`` are logits, sum_j BCE(sigmoid(decoded_j), x_j)."""
    if likelihood == "bernoulli":
        return F.binary_cross_entropy_with_logits(decoded, x, reduction="none").sum(dim=1).mean()
    return (0.5 * ((x - decoded) ** 2).sum(dim=1)).mean()


def decoded_mean(decoded: torch.Tensor, likelihood: str) -> torch.Tensor:
    """The decoder's output in data space: the Gaussian mean, or sigmoid of the Bernoulli logits."""
    return torch.sigmoid(decoded) if likelihood == "bernoulli" else decoded


def vae_loss(
    vae: ModalityVAE, x: torch.Tensor, likelihood: str, generator: torch.Generator | None
) -> dict[str, torch.Tensor]:
    """Eq. 3: -E_q[log p(x|z)] + KL(q(z|x) || p(z)), one reparameterised sample."""
    mu, logvar = vae.encode(x)
    z = reparameterise_logvar(mu, logvar, generator)
    recon = negative_log_likelihood(x, vae.decode(z), likelihood)
    kl = kl_to_standard_normal_logvar(mu, logvar)
    return {"loss": recon + kl, "recon": recon, "kl": kl}


def mapping_loss(
    source: ModalityVAE,
    target: ModalityVAE,
    mapping: nn.Module,
    x_source: torch.Tensor,
    x_target: torch.Tensor,
    likelihood: str,
    alpha: int,
    input_mode: str,
    generator: torch.Generator | None,
) -> dict[str, torch.Tensor]:
    """Eq. 5: L_match = alpha * KL(T(z_m) || z_n) + L_recon for T = T_{n,m} (m = source).

    z_m is a reparameterised sample of q(z_m|x_m) (``input_mode="sample"``, Eq. 4's expectation)
    or its mean (``"mean"``); L_recon = -log p_{theta_n}(x_n | T(z_m)) through the target's
    decoder; the KL compares N(T(z_m), sigma_m^2) with the target posterior q(z_n|x_n). Only
    ``mapping`` should be trainable here: the caller freezes both VAEs (Alg. 1, stage 2)."""
    mu_m, logvar_m = source.encode(x_source)
    z_m = reparameterise_logvar(mu_m, logvar_m, generator) if input_mode == "sample" else mu_m
    mapped = mapping(z_m)
    recon = negative_log_likelihood(x_target, target.decode(mapped), likelihood)
    out = {"recon": recon}
    total = recon
    if alpha:
        mu_n, logvar_n = target.encode(x_target)
        out["kl"] = gaussian_kl(mapped, logvar_m, mu_n, logvar_n)
        total = total + alpha * out["kl"]
    out["loss"] = total
    return out


@torch.no_grad()
def generate(
    gen: Generator, target: int, sources: dict[int, torch.Tensor], likelihood: str, use_mapping: bool
) -> torch.Tensor:
    """Modality ``target`` reconstructed from the held ``sources`` {m: x_m}: the decoding of
    T_{n,m}(mu_m) (or of mu_m itself without the mapping), averaged over the sources."""
    outs = []
    for m, x in sources.items():
        mu, _ = gen.vaes[m].encode(x)
        z = gen.mapping(target, m)(mu) if use_mapping else mu
        outs.append(decoded_mean(gen.vaes[target].decode(z), likelihood))
    return torch.stack(outs).mean(dim=0)


# ---------------------------------------------------------------------------------------------
# The method


class FedRecon(Learner):
    """FedRecon on the fedsim method protocol (Alg. 1; see the module docstring)."""

    name: ClassVar[str] = "fedrecon"
    Config: ClassVar[type[BaseModel]] = FedReconConfig
    supervised: ClassVar[bool] = True
    metric_names: ClassVar[tuple[str, ...]] = ("recon_mse", "cross_mse", "coherence*")

    def __init__(self, config: FedReconConfig, view_dims: tuple[int, ...], n_clusters: int, num_clients: int) -> None:
        self.cfg = config
        self.view_dims = tuple(view_dims)
        self.n_classes = n_clusters
        self.num_clients = num_clients

    # -- model ---------------------------------------------------------------------------------
    def build_model(self, seed: int) -> FedReconModel:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return FedReconModel(self.view_dims, self.cfg, self.n_classes)

    def make_optimizer(self, model: FedReconModel) -> torch.optim.Optimizer:
        """One optimiser, a parameter group per stage: a stage only produces gradients for its
        own group, and parameters without gradients are left alone by SGD and Adam."""
        c = self.cfg
        return make_local_optimizer(
            [
                {"params": list(model.generator.vaes.parameters()), "lr": c.vae_lr, "name": "vae"},
                {"params": list(model.generator.mappings.parameters()), "lr": c.mapping_lr, "name": "mapping"},
                {"params": list(model.task.parameters()), "lr": c.lr, "name": "task"},
            ],
            c,
        )

    # -- Alg. 1 lines 3-4 and 13-16: averaging and the frozen copies ----------------------------
    def owners_of(self, name: str) -> tuple[int, ...] | None:
        """Which modalities a client must hold for its copy of parameter ``name`` to count."""
        parts = name.split(".")
        if parts[0] == "frozen":
            return None  # overwritten with the new global generator below
        if parts[0] == "generator":
            if parts[1] == "vaes":
                return (int(parts[2]),)
            n, m = (int(v) for v in parts[2].split("_"))
            return (n, m)
        if parts[1] == "encoders" and self.cfg.encoder_aggregation == "holders":
            return (int(parts[2]),)
        return ()

    @staticmethod
    def _span(model: FedReconModel, prefix: str) -> tuple[int, int]:
        segments = [(a, b) for name, a, b in parameter_segments(model) if name.startswith(prefix)]
        return segments[0][0], segments[-1][1]

    @torch.no_grad()
    def server_average(self, model: nn.Module) -> ServerAverage:
        return ServerAverage.of(model, self.owners_of, self.cfg.weighting)

    def start_from_average(self, model: nn.Module, data: LocalData, averaged: torch.Tensor) -> torch.Tensor:
        g0, g1 = self._span(model, "generator.")
        f0, f1 = self._span(model, "frozen.")
        averaged[f0:f1] = averaged[g0:g1]  # G~_k, T~_k <- G^(t-1), T^(t-1)
        return averaged

    # -- Alg. 1 lines 5-11: the three stages ----------------------------------------------------
    def _stage_vae(
        self, model: FedReconModel, optimizer: torch.optim.Optimizer, data: LocalData, generator: torch.Generator
    ) -> dict[str, float]:
        sums = {"loss_vae": 0.0, "loss_vae_recon": 0.0, "loss_vae_kl": 0.0}
        steps = 0
        held = data.modalities
        for _ in range(self.cfg.vae_epochs):
            for idx in minibatches(data.n_samples, self.cfg.batch_size, generator):
                terms = [
                    vae_loss(
                        model.generator.vaes[m],
                        data.views[m][idx.to(data.views[m].device)],
                        self.cfg.likelihood,
                        generator,
                    )
                    for m in held
                ]
                total = sum(t["loss"] for t in terms) / len(held)
                optimizer.zero_grad(set_to_none=True)
                total.backward()
                optimizer.step()
                sums["loss_vae"] += float(total.detach())
                sums["loss_vae_recon"] += float(sum(t["recon"] for t in terms).detach()) / len(held)
                sums["loss_vae_kl"] += float(sum(t["kl"] for t in terms).detach()) / len(held)
                steps += 1
        return {k: v / steps for k, v in sums.items()} if steps else {}

    def _stage_mapping(
        self, model: FedReconModel, optimizer: torch.optim.Optimizer, data: LocalData, generator: torch.Generator
    ) -> dict[str, float]:
        pairs = [(n, m) for n in data.modalities for m in data.modalities if n != m]
        if not pairs or not self.cfg.use_mapping or self.cfg.mapping_epochs == 0:
            return {}
        vaes = model.generator.vaes
        vaes.requires_grad_(False)  # Alg. 1 line 7: Freeze(G)
        try:
            sums: dict[str, float] = {}
            steps = 0
            for _ in range(self.cfg.mapping_epochs):
                for idx in minibatches(data.n_samples, self.cfg.batch_size, generator):
                    x = {v: data.views[v][idx.to(data.views[v].device)] for v in data.modalities}
                    terms = [
                        mapping_loss(
                            vaes[m],
                            vaes[n],
                            model.generator.mapping(n, m),
                            x[m],
                            x[n],
                            self.cfg.likelihood,
                            self.cfg.kl_alpha,
                            self.cfg.mapping_input,
                            generator,
                        )
                        for n, m in pairs
                    ]
                    total = sum(t["loss"] for t in terms) / len(pairs)
                    optimizer.zero_grad(set_to_none=True)
                    total.backward()
                    optimizer.step()
                    sums["loss_map"] = sums.get("loss_map", 0.0) + float(total.detach())
                    if self.cfg.kl_alpha:
                        sums["loss_map_kl"] = sums.get("loss_map_kl", 0.0) + float(
                            sum(t["kl"] for t in terms).detach()
                        ) / len(pairs)
                    steps += 1
            return {k: v / steps for k, v in sums.items()} if steps else {}
        finally:
            vaes.requires_grad_(True)

    def entries(self, model: FedReconModel, views: dict[int, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The fusion entries of Eq. 6 and their score offsets: real features of the held
        modalities, the features of each reconstruction of a missing one (local generator, and
        with GGFS the frozen global one), synthetic scores lowered by log(synthetic_weight)."""
        held = tuple(sorted(views))
        generators = [model.generator] + ([model.frozen] if self.cfg.use_global_generator else [])
        weight = self.cfg.synthetic_weight if self.cfg.synthetic_weight is not None else 1.0 / len(generators)
        feats, offsets = [], []
        for m in range(len(self.view_dims)):
            if m in views:
                feats.append(model.task.encode(m, views[m]))
                offsets.append(0.0)
                continue
            for gen in generators:
                x_hat = generate(gen, m, {s: views[s] for s in held}, self.cfg.likelihood, self.cfg.use_mapping)
                feats.append(model.task.encode(m, x_hat))
                offsets.append(math.log(weight))
        ref = feats[0]
        return torch.stack(feats, dim=1), torch.tensor(offsets, dtype=ref.dtype, device=ref.device)

    def _stage_task(
        self, model: FedReconModel, optimizer: torch.optim.Optimizer, data: LocalData, generator: torch.Generator
    ) -> dict[str, float]:
        labels = torch.as_tensor(data.labels, dtype=torch.long, device=next(model.parameters()).device)
        total_loss, steps = 0.0, 0
        for _ in range(self.cfg.local_epochs):
            for idx in minibatches(data.n_samples, self.cfg.batch_size, generator):
                idx = idx.to(labels.device)
                h, offset = self.entries(model, {m: x[idx] for m, x in data.views.items()})
                logits, _ = model.task.classify(h, offset)
                loss = task_loss(logits, labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total_loss += float(loss.detach())
                steps += 1
        return {"loss_task": total_loss / steps} if steps else {}

    def train_round(
        self,
        model: FedReconModel,
        optimizer: torch.optim.Optimizer,
        data: LocalData,
        generator: torch.Generator,
        context: RoundContext | None = None,
    ) -> dict[str, float]:
        model.train()
        reset_optimizer(optimizer)
        losses = self._stage_vae(model, optimizer, data, generator)
        losses.update(self._stage_mapping(model, optimizer, data, generator))
        losses.update(self._stage_task(model, optimizer, data, generator))
        losses["loss"] = losses.get("loss_task", 0.0)
        return losses

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, model: FedReconModel, data: LocalData) -> np.ndarray:
        """Class probabilities on ``data``, missing modalities reconstructed as in training."""
        model.eval()
        h, offset = self.entries(model, data.views)
        logits, _ = model.task.classify(h, offset)
        return torch.softmax(logits, dim=1).cpu().numpy()

    @torch.no_grad()
    def embed(self, model: FedReconModel, data: LocalData) -> np.ndarray:
        model.eval()
        h, offset = self.entries(model, data.views)
        return model.task.classify(h, offset)[1].cpu().numpy()

    def soft_assignments(self, model: FedReconModel, data: LocalData) -> np.ndarray:
        return self.predict(model, data)

    @torch.no_grad()
    def extra_metrics(self, model: FedReconModel, data: LocalData) -> dict[str, float]:
        """Generation quality on the client's test split (see the module docstring)."""
        from sklearn.linear_model import LogisticRegression

        model.eval()
        test = data.test if data.test is not None else data
        lik = self.cfg.likelihood
        out: dict[str, float] = {}
        errors = []
        for m in test.modalities:
            mu, _ = model.generator.vaes[m].encode(test.views[m])
            x_hat = decoded_mean(model.generator.vaes[m].decode(mu), lik)
            errors.append(float(((x_hat - test.views[m]) ** 2).mean()))
        out["recon_mse"] = float(np.mean(errors))
        pairs = [(n, m) for n in data.modalities for m in data.modalities if n != m]
        if not pairs or np.unique(data.labels).size < 2:
            return out
        variants = {
            f"{'map' if mp else 'direct'}_{which}": (mp, which)
            for mp in (True, False)
            for which in ("local", "frozen", "both")
        }
        configured = (
            f"{'map' if self.cfg.use_mapping else 'direct'}_{'both' if self.cfg.use_global_generator else 'local'}"
        )
        scores: dict[str, list[float]] = {k: [] for k in variants}
        real, cross = [], []
        for n, m in pairs:
            clf = LogisticRegression(max_iter=self.cfg.coherence_max_iter)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # ConvergenceWarning on a few hundred samples
                clf.fit(data.views[n].cpu().numpy(), data.labels)
            real.append(float((clf.predict(test.views[n].cpu().numpy()) == test.labels).mean()))
            for key, (use_map, which) in variants.items():
                outs = []
                if which in ("local", "both"):
                    outs.append(generate(model.generator, n, {m: test.views[m]}, lik, use_map))
                if which in ("frozen", "both"):
                    outs.append(generate(model.frozen, n, {m: test.views[m]}, lik, use_map))
                x_hat = torch.stack(outs).mean(dim=0)
                scores[key].append(float((clf.predict(x_hat.cpu().numpy()) == test.labels).mean()))
                if key == configured:
                    out[f"coherence_{n}from{m}"] = scores[key][-1]
                    cross.append(float(((x_hat - test.views[n]) ** 2).mean()))
        for key, values in scores.items():
            out[f"coherence_{key}"] = float(np.mean(values))
        out["coherence"] = out[f"coherence_{configured}"]
        out["coherence_real"] = float(np.mean(real))
        out["cross_mse"] = float(np.mean(cross))
        return out

    def round_cost(self, data: LocalData, num_peers: int) -> float:
        """Samples x forward-pass equivalents (3 per training step): stage 1 per held modality,
        stage 2 per ordered pair, stage 3 plus one generator pass per reconstruction."""
        c = self.cfg
        held = len(data.modalities)
        missing = len(self.view_dims) - held
        pairs = held * (held - 1) if c.use_mapping else 0
        gens = 2 if c.use_global_generator else 1
        per_sample = (
            3 * c.vae_epochs * held + 3 * c.mapping_epochs * pairs + c.local_epochs * (3 + missing * gens * held)
        )
        return float(data.n_samples * per_sample)
