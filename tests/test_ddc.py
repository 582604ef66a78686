"""The DDC loss (fedsim/methods/ddc.py) against a hand computation written with loops."""

import math

import numpy as np
import pytest
import torch

from fedsim.methods.ddc import DDCHead, ddc_loss, gaussian_kernel


def _hand_ddc(a: np.ndarray, hidden: np.ndarray, relative_sigma: float = 0.15) -> dict[str, float]:
    n, k = a.shape
    d = np.array([[max(float(((hidden[i] - hidden[j]) ** 2).sum()), 0.0) for j in range(n)] for i in range(n)])
    # torch.median (the reference code's) takes the lower of the two middle values
    sigma2 = max(relative_sigma * float(np.sort(d.ravel())[(d.size - 1) // 2]), 1e-9)
    kern = np.exp(-d / (2 * sigma2))

    def d_cs(x: np.ndarray) -> float:
        m = np.array(
            [
                [sum(x[a_, i] * kern[a_, b] * x[b, j] for a_ in range(n) for b in range(n)) for j in range(k)]
                for i in range(k)
            ]
        )
        s = sum(m[i, j] / math.sqrt(m[i, i] * m[j, j]) for i in range(k) for j in range(i + 1, k))
        return 2 / (k * (k - 1)) * s

    ddc1 = d_cs(a)
    ddc2 = 2 / (n * (n - 1)) * sum(float(a[i] @ a[j]) for i in range(n) for j in range(i + 1, n))
    corners = np.eye(k)
    m_prime = np.array([[math.exp(-float(((a[i] - corners[c]) ** 2).sum())) for c in range(k)] for i in range(n)])
    ddc3 = d_cs(m_prime)
    return {"ddc1": ddc1, "ddc2": ddc2, "ddc3": ddc3, "total": ddc1 + ddc2 + ddc3}


def test_ddc_terms_match_a_hand_computation():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 3))
    a = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    hidden = rng.normal(size=(6, 4))
    got = ddc_loss(torch.tensor(a), torch.tensor(hidden))
    want = _hand_ddc(a, hidden)
    for key in want:
        assert float(got[key]) == pytest.approx(want[key], rel=1e-9), key


def test_kernel_bandwidth_is_relative_to_the_median_and_detached():
    hidden = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    kern = gaussian_kernel(hidden)
    # squared distances 1, 4, 5 (and zeros on the diagonal): median over the 9 entries is 1
    assert float(kern[0, 1]) == pytest.approx(math.exp(-1 / (2 * 0.15)))
    assert float(kern[1, 2]) == pytest.approx(math.exp(-5 / (2 * 0.15)))
    kern.sum().backward()  # the gradient flows through D only, sigma is a constant
    assert hidden.grad is not None


def test_ddc_rewards_a_clean_clustering_over_a_uniform_one():
    torch.manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    labels = torch.arange(3).repeat_interleave(5)
    hidden = centres[labels] + 0.1 * torch.randn(15, 2)
    one_hot = torch.nn.functional.one_hot(labels, 3).double() * 0.98 + 0.01 / 1.5
    uniform = torch.full((15, 3), 1 / 3, dtype=torch.double)
    assert float(ddc_loss(one_hot, hidden.double())["total"]) < float(ddc_loss(uniform, hidden.double())["total"])


def test_head_outputs_simplex_rows_and_hidden_features():
    head = DDCHead(8, 4)
    a, h = head(torch.randn(10, 8))
    assert a.shape == (10, 4) and h.shape == (10, 100)
    assert torch.allclose(a.sum(dim=1), torch.ones(10))
