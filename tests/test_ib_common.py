"""The information-bottleneck building blocks MSDIB and GIB share (fedsim/methods/ib_common.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.methods.base import flat_parameters
from fedsim.methods.ib_common import (
    BestCheckpoint,
    IBNetwork,
    JSDCritic,
    VariationalEncoder,
    WeightedFusion,
    balanced_ce,
    batch_statistics,
    drop_last_batches,
    joint_mi,
    jsd_mi,
    mean_pairwise,
    sinkhorn_labels,
    split_gaussian,
    step_lr,
)

pytestmark = pytest.mark.timeout(120)


def np_mi(a: np.ndarray, b: np.ndarray) -> float:
    p = a.T @ b
    p = (p + p.T) / 2
    p = p / p.sum()
    row, col = p.sum(axis=1), p.sum(axis=0)
    return float(
        sum(
            p[k, l] * math.log(p[k, l] / (row[k] * col[l]))
            for k in range(p.shape[0])
            for l in range(p.shape[1])
            if p[k, l] > 0
        )
    )


def test_joint_mi_by_hand_and_ordering():
    rng = np.random.default_rng(0)
    a, b = rng.random((6, 4)), rng.random((6, 4))
    assert joint_mi(torch.tensor(a), torch.tensor(b)).item() == pytest.approx(np_mi(a, b), rel=1e-9)
    onehot = torch.eye(3).repeat(4, 1).double()
    independent = torch.full((12, 3), 1.0 / 3, dtype=torch.float64)
    assert joint_mi(onehot, onehot).item() == pytest.approx(math.log(3), rel=1e-9)
    assert joint_mi(independent, independent).item() == pytest.approx(0.0, abs=1e-12)
    assert joint_mi(onehot, onehot) > joint_mi(onehot, independent)


def test_joint_mi_has_finite_gradients_with_zero_entries():
    a = torch.eye(3).repeat(2, 1).requires_grad_()
    joint_mi(a, a).backward()
    assert torch.isfinite(a.grad).all()


def test_encoder_is_bn_relu_everywhere_and_splits_mu_sigma():
    enc = VariationalEncoder(5, [8, 6])
    kinds = [type(m).__name__ for m in enc.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU"] * 2
    h = enc(torch.randn(10, 5))
    assert (h >= 0).all()
    mu, sigma = split_gaussian(h, 4)
    assert mu.shape == (10, 4) and sigma.shape == (10, 2) and (sigma > 0).all()
    assert torch.equal(mu, h[:, :4])


def test_fusion_starts_uniform_and_renormalises_over_a_subset():
    fusion = WeightedFusion(3)
    h = {v: torch.full((2, 4), float(v)) for v in range(3)}
    assert torch.allclose(fusion(h), torch.full((2, 4), 1.0))
    assert torch.allclose(fusion.normalised((0, 2)), torch.tensor([0.5, 0.5]))


def test_sinkhorn_balances_a_skewed_assignment():
    torch.manual_seed(0)
    logits = torch.randn(300, 3)
    logits[:, 0] += 2.0  # most samples prefer cluster 0
    p = torch.softmax(logits, dim=1)
    assert np.bincount(p.argmax(1).numpy(), minlength=3).max() > 200
    counts = np.bincount(sinkhorn_labels(p).numpy(), minlength=3)
    assert counts.min() >= 80 and counts.max() <= 120


def test_balanced_ce_takes_softmax_of_the_probabilities_as_logits():
    p = torch.softmax(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    labels = sinkhorn_labels(torch.softmax(p, dim=1))
    expected = torch.nn.functional.cross_entropy(torch.softmax(p, dim=1), labels)
    assert balanced_ce(p).item() == pytest.approx(expected.item(), rel=1e-6)
    assert balanced_ce(p, "softmax_p").item() == pytest.approx(expected.item(), rel=1e-6)


def test_balanced_ce_of_log_p_is_the_plain_cross_entropy_and_reaches_zero():
    p = torch.softmax(torch.randn(40, 4, generator=torch.Generator().manual_seed(1)), dim=1)
    expected = torch.nn.functional.nll_loss(torch.log(p), sinkhorn_labels(p))
    assert balanced_ce(p, "log_p").item() == pytest.approx(expected.item(), rel=1e-6)
    # A confident, balanced head: the plain CE goes to 0; the code's logits softmax(p) are
    # a = e / (e + 3) and b = 1 / (e + 3), so its CE stays at log(e^a + 3 e^b) - a = 1.17, near
    # log 4 = 1.39, however confident the head is (why reading "tuned" takes log p).
    confident = torch.eye(4).repeat(10, 1) * (1 - 4e-6) + 1e-6
    assert balanced_ce(confident, "log_p").item() < 1e-4
    a, b = math.e / (math.e + 3), 1 / (math.e + 3)
    assert balanced_ce(confident, "softmax_p").item() == pytest.approx(
        math.log(math.exp(a) + 3 * math.exp(b)) - a, rel=1e-4
    )


def test_jsd_bound_is_higher_for_dependent_pairs_under_a_trained_critic():
    torch.manual_seed(0)
    critic = JSDCritic(2, 2, width=32)
    opt = torch.optim.Adam(critic.parameters(), lr=1e-2)
    for _ in range(150):
        x = torch.randn(64, 2)
        loss = -jsd_mi(critic, x, x + 0.1 * torch.randn(64, 2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x = torch.randn(256, 2)
    dependent = jsd_mi(critic, x, x + 0.1 * torch.randn(256, 2))
    independent = jsd_mi(critic, x, torch.randn(256, 2))
    assert dependent > independent


def test_mean_pairwise_and_step_lr():
    values = {0: torch.tensor(1.0), 1: torch.tensor(2.0), 2: torch.tensor(4.0)}
    assert mean_pairwise(values, lambda a, b: a * b).item() == pytest.approx((2 + 4 + 8) / 3)
    assert mean_pairwise({0: torch.tensor(1.0)}, lambda a, b: a * b).item() == 0.0
    assert [step_lr(1.0, r, 50, 0.1) for r in (1, 50, 51, 100)] == [1.0, 1.0, pytest.approx(0.1), pytest.approx(0.1)]
    assert step_lr(1.0, 100, None, 0.1) == 1.0


def test_drop_last_batches():
    parts = drop_last_batches(250, 100, torch.Generator().manual_seed(0))
    assert [p.numel() for p in parts] == [100, 100]
    assert [p.numel() for p in drop_last_batches(30, 100, torch.Generator().manual_seed(0))] == [30]


def test_batch_statistics_leaves_buffers_alone():
    net = IBNetwork((5, 7), [8, 6], 3, 4, 5)
    before = {k: v.clone() for k, v in net.state_dict().items() if "running" in k}
    net.eval()
    with batch_statistics(net):
        out = net({0: torch.randn(20, 5), 1: torch.randn(20, 7)})
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    assert torch.allclose(out["y_fused"].sum(1), torch.ones(20))
    assert not net.training


def test_network_critic_is_frozen_and_never_averaged():
    net = IBNetwork((5, 7), [8, 6], 3, 4, 5)
    assert not any(p.requires_grad for p in net.critic.parameters())
    assert IBNetwork.owners_of("critic.net.0.weight") is None
    assert IBNetwork.owners_of("encoders.1.net.0.weight") == (1,)
    assert IBNetwork.owners_of("head.output.weight") == ()


def test_best_checkpoint_restores_the_lowest_scoring_epoch():
    net = torch.nn.Linear(2, 2)
    best = BestCheckpoint()
    kept = None
    for round_, score in enumerate([3.0, 1.0, 2.0], start=1):
        with torch.no_grad():
            net.weight.add_(1.0)
        if score == 1.0:
            kept = flat_parameters(net).clone()
        info = best.track(net, score, round_, 3)
    assert info["best_round"] == 2.0
    assert torch.equal(flat_parameters(net), kept)
