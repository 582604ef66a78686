"""The supervised task and the baselines (fedsim.methods.supervised): every loss term and the
FedAdam server step against hand computations, zero-filling, aggregation by owners, and the
three baselines end to end through the runtime with missing modalities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.methods.base import (
    LocalData,
    PeerModel,
    RoundContext,
    average_by_owners,
    flat_parameters,
    load_flat_parameters,
)
from fedsim.methods.supervised import (
    FedAvg,
    FedOpt,
    FedOptConfig,
    FedProx,
    FedProxConfig,
    SupervisedConfig,
    attention_fusion,
    fedadam_step,
    proximal_term,
    task_loss,
    zero_filled_entries,
)


def test_attention_fusion_by_hand():  # Eq. 6
    h = np.array([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [[-1.0, 0.5], [0.3, 0.3], [2.0, -1.0]]])  # (n=2, E=3, d=2)
    w = np.array([[0.5, -1.0], [1.0, 0.2], [0.0, 0.7]])  # (d_a=3, d=2)
    b = np.array([0.1, -0.2, 0.3])
    c = np.array([1.0, -0.5, 2.0])
    offset = np.array([0.0, math.log(0.5), math.log(0.5)])
    for off in (None, offset):
        fused_hand = np.zeros((2, 2))
        a_hand = np.zeros((2, 3))
        for i in range(2):
            scores = [float(np.tanh(w @ h[i, e] + b) @ c) + (0.0 if off is None else off[e]) for e in range(3)]
            exp = np.exp(scores)
            a_hand[i] = exp / exp.sum()
            fused_hand[i] = sum(a_hand[i, e] * h[i, e] for e in range(3))
        fused, a = attention_fusion(
            torch.tensor(h),
            torch.tensor(w),
            torch.tensor(b),
            torch.tensor(c),
            None if off is None else torch.tensor(off),
        )
        assert np.allclose(a.numpy(), a_hand) and np.allclose(fused.numpy(), fused_hand)
    # the offset log(1/2) halves an entry's unnormalised weight
    _, a_plain = attention_fusion(torch.tensor(h), torch.tensor(w), torch.tensor(b), torch.tensor(c))
    _, a_half = attention_fusion(
        torch.tensor(h), torch.tensor(w), torch.tensor(b), torch.tensor(c), torch.tensor(offset)
    )
    ratio = (a_half / a_plain).numpy()
    assert np.allclose(ratio[:, 1] / ratio[:, 0], 0.5) and np.allclose(ratio[:, 2] / ratio[:, 0], 0.5)


def test_task_loss_is_cross_entropy_by_hand():  # Eq. 1, L_task
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    y = np.array([0, 2])
    expected = -np.mean([logits[i, y[i]] - math.log(np.exp(logits[i]).sum()) for i in range(2)])
    assert task_loss(torch.tensor(logits), torch.tensor(y)).item() == pytest.approx(expected)


def test_proximal_term_by_hand():  # FedProx
    p = [torch.tensor([1.0, 2.0]), torch.tensor([[0.5]])]
    a = [torch.tensor([0.0, 4.0]), torch.tensor([[1.5]])]
    assert proximal_term(p, a, mu=0.2).item() == pytest.approx(0.1 * (1 + 4 + 1))


def test_fedadam_step_by_hand():  # Reddi et al. 2021, Alg. 2
    x0 = np.array([1.0, -2.0])
    m = np.zeros(2)
    v = np.zeros(2)
    lr, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x, mt, vt = torch.tensor(x0), torch.zeros(2, dtype=torch.float64), torch.zeros(2, dtype=torch.float64)
    for avg in (np.array([1.5, -2.5]), np.array([1.2, -1.0])):
        delta = avg - x0
        m = b1 * m + (1 - b1) * delta
        v = b2 * v + (1 - b2) * delta**2
        x0 = x0 + lr * m / (np.sqrt(v) + tau)
        x, mt, vt = fedadam_step(x, torch.tensor(avg), mt, vt, lr, b1, b2, tau)
        assert np.allclose(x.numpy(), x0) and np.allclose(mt.numpy(), m) and np.allclose(vt.numpy(), v)


def test_average_by_owners_by_hand():
    model = torch.nn.ModuleDict(
        {
            "a": torch.nn.Linear(1, 1, bias=False),
            "ab": torch.nn.Linear(1, 1, bias=False),
            "shared": torch.nn.Linear(1, 1, bias=False),
            "own": torch.nn.Linear(1, 1, bias=False),
        }
    )
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(-9.0)
    peers = [
        PeerModel(0, 1, (0, 1), torch.full((4,), 1.0), n_samples=10),
        PeerModel(1, 1, (0,), torch.full((4,), 4.0), n_samples=30),
        PeerModel(2, 1, (1,), torch.full((4,), 7.0), n_samples=20),
    ]
    owners = {"a.weight": (0,), "ab.weight": (0, 1), "shared.weight": (), "own.weight": None}
    out, w = average_by_owners(model, peers, owners.__getitem__, "samples")
    # parameter order: a, ab, shared, own
    assert out.tolist() == pytest.approx([(10 + 120) / 40, 1.0, (10 + 120 + 140) / 60, -9.0])
    assert w == pytest.approx({0: 1 / 6, 1: 1 / 2, 2: 1 / 3})
    out, w = average_by_owners(model, peers, owners.__getitem__, "uniform")
    assert out.tolist() == pytest.approx([2.5, 1.0, 4.0, -9.0])
    assert w == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    # a part nobody owns keeps the client's own value
    out, _ = average_by_owners(model, peers[1:], owners.__getitem__, "uniform")
    assert out.tolist()[1] == -9.0


def _data(n=24, dims=(5, 3), modalities=(0, 1), seed=0, n_classes=3) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    labels = np.arange(n) % n_classes
    views = {
        m: torch.rand(n, dims[m], generator=g) + torch.tensor(labels, dtype=torch.float32)[:, None] for m in modalities
    }
    test = {m: v[: n // 4] for m, v in views.items()}
    return LocalData(0, views, labels, np.arange(n), test=LocalData(0, test, labels[: n // 4], np.arange(n // 4)))


def _method(cls=FedAvg, config=SupervisedConfig, **kw):
    cfg = config(**{"hidden": [8], "feature_dim": 4, "attention_dim": 3, "head_hidden": 6, "batch_size": 8, **kw})
    return cls(cfg, (5, 3), 3, 2)


def test_zero_filling_feeds_zeros_to_a_missing_modality():
    method = _method()
    model = method.build_model(seed=0)
    data = _data(modalities=(1,))
    entries = zero_filled_entries(model, data.views, (5, 3))
    assert entries.shape == (24, 2, 4)
    with torch.no_grad():
        assert torch.allclose(entries[:, 0], model.encoders[0](torch.zeros(24, 5)).expand(24, 4))
        assert torch.allclose(entries[:, 1], model.encoders[1](data.views[1]))


def test_fedavg_trains_on_labels_seeded_and_predicts_probabilities():
    method = _method(lr=1e-2, local_epochs=5)
    data = _data()
    runs = []
    for _ in range(2):
        model = method.build_model(seed=1)
        opt = method.make_optimizer(model)
        labels = torch.as_tensor(data.labels)
        with torch.no_grad():
            before = task_loss(model.classify(method.entries(model, data.views))[0], labels).item()
        losses = method.train_round(model, opt, data, torch.Generator().manual_seed(0), RoundContext(1))
        with torch.no_grad():
            after = task_loss(model.classify(method.entries(model, data.views))[0], labels).item()
        assert after < before and set(losses) == {"loss", "loss_task"}
        runs.append(flat_parameters(model))
    assert torch.equal(runs[0], runs[1])
    p = method.predict(model, data.test)
    assert p.shape == (6, 3) and np.allclose(p.sum(1), 1.0)
    # training uses the labels: permuting them changes the trained model
    shuffled = LocalData(0, data.views, data.labels[::-1].copy(), data.indices)
    model = method.build_model(seed=1)
    method.train_round(model, method.make_optimizer(model), shuffled, torch.Generator().manual_seed(0), RoundContext(1))
    assert not torch.equal(flat_parameters(model), runs[0])


def test_fedavg_averages_an_encoder_over_its_holders_only():
    method = _method()
    model = method.build_model(seed=0)
    size = flat_parameters(model).numel()
    peers = [PeerModel(0, 1, (0, 1), torch.full((size,), 1.0), 10), PeerModel(1, 1, (1,), torch.full((size,), 3.0), 30)]
    flat, _ = method.aggregate(model, _data(), peers)
    load_flat_parameters(model, flat)
    assert torch.all(model.encoders[0][0].weight == 1.0)  # only client 0 holds modality 0
    assert torch.allclose(model.encoders[1][0].weight, torch.tensor(2.5))  # (10 * 1 + 30 * 3) / 40
    assert torch.allclose(model.head[0].weight, torch.tensor(2.5))
    everyone = _method(encoder_aggregation="all")
    flat, _ = everyone.aggregate(model, _data(), peers)
    load_flat_parameters(model, flat)
    assert torch.allclose(model.encoders[0][0].weight, torch.tensor(2.5))


def test_fedprox_term_is_in_the_loss_and_pulls_towards_the_start():
    data = _data()
    prox = _method(FedProx, FedProxConfig, mu=100.0, lr=1e-2, local_epochs=3)
    avg = _method(lr=1e-2, local_epochs=3)
    moved = {}
    for name, method in (("prox", prox), ("avg", avg)):
        model = method.build_model(seed=2)
        start = flat_parameters(model)
        losses = method.train_round(
            model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(1)
        )
        moved[name] = float((flat_parameters(model) - start).norm())
        if name == "prox":
            assert losses["loss"] == pytest.approx(losses["loss_task"] + losses["loss_prox"], rel=1e-5)
            assert losses["loss_prox"] > 0
    assert moved["prox"] < 0.5 * moved["avg"]


def test_fedopt_replicas_take_the_same_server_step_in_sync():
    """Every client of a synchronous round downloads the same uploads, so every replica of the
    server optimiser computes the same x_t; round 1 (all peers = x_0) leaves x_0 unchanged."""
    a, b = _method(FedOpt, FedOptConfig, server_lr=0.05), _method(FedOpt, FedOptConfig, server_lr=0.05)
    ma, mb = a.build_model(seed=0), b.build_model(seed=0)
    x0 = flat_parameters(ma)
    start = [PeerModel(0, 0, (0, 1), x0.clone(), 10), PeerModel(1, 0, (0, 1), x0.clone(), 20)]
    xa, _ = a.aggregate(ma, _data(), start)
    xb, _ = b.aggregate(mb, _data(), start)
    assert torch.allclose(xa, x0, atol=1e-6) and torch.equal(xa, xb)  # equal up to rounding
    g = torch.Generator().manual_seed(5)
    uploads = [
        PeerModel(0, 1, (0, 1), x0 + 0.01 * torch.randn(x0.shape, generator=g), 10),
        PeerModel(1, 1, (0, 1), x0 + 0.01 * torch.randn(x0.shape, generator=g), 20),
    ]
    xa, _ = a.aggregate(ma, _data(), uploads)
    xb, _ = b.aggregate(mb, _data(), uploads)
    assert torch.equal(xa, xb)
    average = (10 * uploads[0].params + 20 * uploads[1].params) / 30
    z = torch.zeros_like(x0)
    expected, _, _ = fedadam_step(x0, average, z, z, 0.05, 0.9, 0.99, 1e-3)
    assert torch.allclose(xa, expected, atol=1e-6)
    assert not torch.allclose(xa, average)  # the server step is not plain averaging


CLASSIFY = {
    "dataset": "synthetic",
    "synthetic": {"view_dims": [12, 16], "n_clusters": 3, "n_samples": 240, "noise": 0.2},
    "task": "classification",
    "num_clients": 4,
    "client_ratio": "1:0",
    "partition": "dirichlet",
    "dirichlet_alpha": 5.0,
    "missing_rate": 0.5,
    "mode": "sync",
    "rounds": 3,
    "eval_every": 0,
    "pretrain": {"enabled": False},
    "tracking": {"enabled": False, "progress": False},
}


@pytest.mark.parametrize("method", ["fedavg", "fedprox", "fedopt"])
def test_baselines_run_classification_with_missing_modalities(ray_session, method):
    from fedsim.config import build_config
    from fedsim.runner import run_experiment

    section = {"hidden": [16], "feature_dim": 8, "attention_dim": 8, "head_hidden": 8}
    cfg = build_config({**CLASSIFY, "method": method, method: section})
    out = run_experiment(cfg).summary
    assert {"accuracy", "macro_f1", "uar"} <= set(out)
    assert all(0.0 <= out[k] <= 1.0 for k in ("accuracy", "macro_f1", "uar"))
    assert out["accuracy"] > 1 / 3  # 3 well-separated classes, 3 rounds: better than chance
    assert any(len(m) == 1 for m in out["federation"]["client_modalities"])
