"""The DDC clustering loss (Kampffmeyer et al., "Deep divergence-based approach to clustering",
Neural Networks 2019), the clustering objective of MSDIB (L_DDC in Eq. 1,
../shared/papers/003_ab27bfa5cd4684e6.txt) and GIB (Eq. 7, ../shared/papers/004_bdfb457f338739bc.txt).

Neither paper prints the loss; ../shared/papers/PROTOCOLS.md ("DDC loss") gives it as the public
reference code computes it, and this module follows that description term by term:

- head: Linear(d -> 100), ReLU, BatchNorm, Linear(100 -> K), softmax -> assignments A (n x K);
  the kernel is computed on the 100-d hidden output;
- kernel: squared Euclidean distances D in the batch (negatives from round-off clipped to 0),
  sigma^2 = 0.15 * median(D), detached and clamped >= 1e-9, K = exp(-D / (2 sigma^2));
- d_cs(A, K): M = A^T K A, M_ij / sqrt(M_ii M_jj), strict upper triangle summed, x 2 / (K (K-1));
- DDC1 = d_cs(A, K) (cluster separation and compactness);
- DDC2 = 2 / (n (n-1)) * sum_{i<j} (A A^T)_ij (orthogonal assignments);
- DDC3 = d_cs(M', K) with M'_ic = exp(-||a_i - e_c||^2), e_c the simplex corners (assignments
  close to one-hot).
- loss = DDC1 + DDC2 + DDC3.

DDC1 alone is also the label-free model-selection score (PROTOCOLS.md): the restart with the
lowest DDC1 is kept.
"""

from __future__ import annotations

import torch
from torch import nn

EPSILON = 1e-9


class DDCHead(nn.Module):
    """Linear(in -> hidden), ReLU, BatchNorm1d, Linear(hidden -> K), softmax; with
    ``bn_before_relu`` the hidden layer is Linear, BatchNorm1d, ReLU (MSDIB's released code).

    ``forward`` returns (assignments (n, K), hidden (n, hidden)); the kernel of the DDC loss is
    computed on ``hidden``."""

    def __init__(self, in_dim: int, n_clusters: int, hidden: int = 100, bn_before_relu: bool = False) -> None:
        super().__init__()
        norm_act = [nn.BatchNorm1d(hidden), nn.ReLU()] if bn_before_relu else [nn.ReLU(), nn.BatchNorm1d(hidden)]
        self.hidden = nn.Sequential(nn.Linear(in_dim, hidden), *norm_act)
        self.output = nn.Linear(hidden, n_clusters)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.hidden(x)
        return torch.softmax(self.output(h), dim=1), h


def squared_distances(x: torch.Tensor) -> torch.Tensor:
    """Pairwise squared Euclidean distances of the rows of ``x``, negatives clipped to 0."""
    sq = (x * x).sum(dim=1)
    return (sq[:, None] - 2.0 * x @ x.T + sq[None, :]).clamp_min(0.0)


def gaussian_kernel(hidden: torch.Tensor, relative_sigma: float = 0.15) -> torch.Tensor:
    """K = exp(-D / (2 sigma^2)), sigma^2 = relative_sigma * median(D) (detached, >= 1e-9).

    ``torch.median`` takes the lower of the two middle values for an even count, as the reference
    code does; the median runs over all n^2 entries, diagonal zeros included."""
    d = squared_distances(hidden)
    sigma2 = (relative_sigma * torch.median(d)).detach().clamp_min(EPSILON)
    return torch.exp(-d / (2.0 * sigma2))


def _strict_upper_sum(m: torch.Tensor) -> torch.Tensor:
    return torch.triu(m, diagonal=1).sum()


def cauchy_schwarz_term(a: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """d_cs(A, K) = 2 / (K (K-1)) * sum_{i<j} M_ij / sqrt(M_ii M_jj), M = A^T K A."""
    k = a.shape[1]
    m = a.T @ kernel @ a
    diag = torch.diagonal(m).clamp_min(EPSILON)
    normalised = m / torch.sqrt(diag[:, None] * diag[None, :])
    return 2.0 / (k * (k - 1)) * _strict_upper_sum(normalised)


def ddc_loss(assignments: torch.Tensor, hidden: torch.Tensor, relative_sigma: float = 0.15) -> dict[str, torch.Tensor]:
    """The three DDC terms and their sum for one batch (see the module docstring)."""
    n, k = assignments.shape
    kernel = gaussian_kernel(hidden, relative_sigma)
    ddc1 = cauchy_schwarz_term(assignments, kernel)
    ddc2 = 2.0 / (n * (n - 1)) * _strict_upper_sum(assignments @ assignments.T)
    corners = torch.eye(k, dtype=assignments.dtype, device=assignments.device)
    m_prime = torch.exp(-((assignments[:, None, :] - corners[None, :, :]) ** 2).sum(dim=2))
    ddc3 = cauchy_schwarz_term(m_prime, kernel)
    return {"ddc1": ddc1, "ddc2": ddc2, "ddc3": ddc3, "total": ddc1 + ddc2 + ddc3}
