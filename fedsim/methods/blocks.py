"""Building blocks the methods share: MLPs, modality ownership of parameters, diagonal Gaussians.

One place for what several method modules need, so a method module holds its paper's model and
losses and nothing generic. Moved here unchanged (the arithmetic of every function is what its
method used before), so no reproduced number moves.
"""

from __future__ import annotations

import itertools

import torch
from torch import nn


def mlp(widths: list[int], activation: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """Linear layers of the given widths with ``activation`` between them and none after the
    last: the encoders, decoders and heads of AFMCC, CMMC, FMCSC, FedRecon and the baselines."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(widths)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(activation())
    return nn.Sequential(*layers)


def modality_index(name: str, prefixes: tuple[str, ...] = ("encoders",)) -> int | None:
    """The modality m of a parameter named ``<prefix>.<m>.*`` for one of ``prefixes`` (the
    per-view module lists: ``encoders``, ``decoders``), else None (a shared parameter)."""
    head, _, rest = name.partition(".")
    if head in prefixes:
        return int(rest.split(".", 1)[0])
    return None


# -- diagonal Gaussians -------------------------------------------------------------------------
# Two parametrisations, as the papers print them: FedRecon's VAEs carry log-variances, MSDIB's
# and GIB's variational encoders standard deviations (softplus + floor).


def kl_to_standard_normal_logvar(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag e^logvar) || N(0, I)) = -1/2 sum_j (1 + logvar_j - mu_j^2 - e^logvar_j),
    per sample (summed over latent dimensions), averaged over the batch."""
    return (-0.5 * (1 + logvar - mu**2 - logvar.exp()).sum(dim=1)).mean()


def kl_to_standard_normal_sigma(mu: torch.Tensor, sigma: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """Mean over samples of KL[N(mu, diag sigma^2) || N(0, I)], summed (or averaged) over the
    coordinates (MSDIB Eq. 11)."""
    per_coordinate = 0.5 * (mu.pow(2) + sigma.pow(2) - 2.0 * torch.log(sigma) - 1.0)
    return (per_coordinate.sum(dim=1) if reduction == "sum" else per_coordinate.mean(dim=1)).mean()


def reparameterise_logvar(mu: torch.Tensor, logvar: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) drawn from ``generator`` (seeded)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
    return mu + (0.5 * logvar).exp() * eps


def reparameterise(mu: torch.Tensor, sigma: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A sample of N(mu, diag sigma^2) from standard-normal ``noise`` (rsample)."""
    return mu + sigma * noise
