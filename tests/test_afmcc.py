"""AFMCC (../shared/papers/000_c429ab24434318c7.txt): every loss against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedsim.methods.afmcc import (
    AFMCC,
    AFMCCConfig,
    class_correlation,
    constraint_loss,
    contrastive_loss,
    eq6_log_weights,
    fuse,
    reconstruction_loss,
    target_correlation,
)
from fedsim.methods.base import LocalData, PeerModel, RoundContext, flat_parameters, load_flat_parameters, unflatten


def test_fuse_is_mean_over_fusion_set():  # Eq. 1
    z = {0: torch.tensor([[1.0, 2.0]]), 1: torch.tensor([[3.0, 6.0]]), 2: torch.tensor([[100.0, 100.0]])}
    assert torch.allclose(fuse(z, (0, 1)), torch.tensor([[2.0, 4.0]]))


def test_reconstruction_loss_by_hand():  # Eq. 2
    x = {0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1: torch.tensor([[2.0], [0.0]])}
    x_hat = {0: torch.tensor([[0.0, 0.0], [0.0, 0.0]]), 1: torch.tensor([[1.0], [3.0]])}
    # sample 1: 1 + 1 ; sample 2: 1 + 9 ; divided by N=2
    assert reconstruction_loss(x, x_hat).item() == pytest.approx((2 + 10) / 2)
    # the MSE reading: per modality the mean over samples and features
    assert reconstruction_loss(x, x_hat, "mse").item() == pytest.approx((1 + 0 + 0 + 1) / 4 + (1 + 9) / 2)


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.mark.parametrize("denominator", ["printed", "all"])
def test_contrastive_loss_by_hand(denominator):  # Eq. 3
    h = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    z = {0: np.array([[2.0, 0.1], [0.3, 1.0], [1.0, -1.0]]), 1: np.array([[1.0, 1.0], [-1.0, 0.5], [0.2, 0.9]])}
    tau = 0.5
    n = h.shape[0]
    expected = 0.0
    for zv in z.values():
        for i in range(n):
            num = math.exp(_cos(h[i], zv[i]) / tau)
            js = [j for j in range(n) if j != i] if denominator == "printed" else range(n)
            den = sum(math.exp(_cos(h[i], zv[j]) / tau) for j in js)
            expected -= math.log(num / den)
    expected /= n
    got = contrastive_loss(torch.tensor(h), {v: torch.tensor(a) for v, a in z.items()}, tau, denominator)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_class_correlation_and_target_by_hand():  # Eq. 4 and Q_tgt
    p = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [1.0, 0.0]])  # (N=4, K=2)
    n, k = 4, 2
    q_hand = np.zeros((k, k))
    for a in range(k):
        for b in range(k):
            q_hand[a, b] = k / n * sum(float(p[i, a] * p[i, b]) for i in range(n))
    assert np.allclose(class_correlation(p).numpy(), q_hand)
    lam = 0.3
    assert np.allclose(
        target_correlation(2, lam).numpy(), [[lam + (1 - lam) / 2, (1 - lam) / 2], [(1 - lam) / 2, lam + (1 - lam) / 2]]
    )


def test_constraint_loss_by_hand():  # Eq. 5 with p = softmax(W h)
    h = torch.tensor([[1.0, -1.0], [0.5, 2.0], [0.0, 0.0]])
    w = torch.nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        w.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    logits = h.numpy() @ w.weight.detach().numpy().T
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    q = p.T @ p / (3 / 2)
    lam = 0.3
    tgt = lam * np.eye(2) + (1 - lam) * np.ones((2, 2)) / 2
    assert constraint_loss(h, w, lam).item() == pytest.approx(((q - tgt) ** 2).sum(), rel=1e-5)


def test_eq6_weights_printed_sign_and_log_space():  # Eq. 6
    d = torch.tensor([[1.0, 2.0], [3.0, 4.0], [0.5, 0.0]], dtype=torch.float64)
    valid = torch.ones_like(d, dtype=torch.bool)
    eps = np.array([math.exp(1) + math.exp(2), math.exp(3) + math.exp(4), math.exp(0.5) + math.exp(0.0)])
    got = eq6_log_weights(d, valid).exp().numpy()
    assert np.allclose(got, eps / eps.sum())
    assert got.argmax() == 1  # the printed sign favours the model that deviates most
    flipped = eq6_log_weights(d, valid, sign=-1).exp().numpy()
    eps_neg = np.exp(-d.numpy()).sum(1)
    assert np.allclose(flipped, eps_neg / eps_neg.sum())
    tempered = eq6_log_weights(d, valid, temperature=2.0).exp().numpy()
    eps_t = np.exp(d.numpy() / 2).sum(1)
    assert np.allclose(tempered, eps_t / eps_t.sum())


def test_eq6_no_overflow_and_missing_modalities():
    d = torch.tensor([[5000.0, 4000.0], [5001.0, 0.0], [1.0, 1.0]])  # exp(5000) overflows float64
    valid = torch.tensor([[True, True], [True, False], [False, False]])
    w = eq6_log_weights(d, valid).exp()
    assert torch.isfinite(w).all()
    assert w[2].item() == 0.0  # a model sharing no modality with the client gets no weight
    assert w[1].item() == pytest.approx(1 / (1 + math.exp(-1)), rel=1e-5)


def _tiny_method(**overrides) -> tuple[AFMCC, LocalData]:
    """A tiny AFMCC under the printed reading (the equations as printed), unless overridden."""
    cfg = AFMCCConfig(**{"d": 4, "hidden": [8], "phi": 2, "reading": "printed", **overrides})
    method = AFMCC(cfg, view_dims=(5, 3), n_clusters=2, num_clients=3)
    g = torch.Generator().manual_seed(0)
    views = {0: torch.rand(10, 5, generator=g), 1: torch.rand(10, 3, generator=g)}
    return method, LocalData(0, views, np.zeros(10, dtype=np.int64), np.arange(10))


def test_aggregate_uniform_is_the_mean():
    method, data = _tiny_method(aggregation="uniform")
    models = [method.build_model(seed=s) for s in range(3)]
    peers = [PeerModel(i, 1, (0, 1), flat_parameters(m)) for i, m in enumerate(models)]
    flat, weights = method.aggregate(models[0], data, peers)
    assert torch.allclose(flat, torch.stack([p.params for p in peers]).mean(0), atol=1e-6)
    assert weights == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})


def test_aggregate_eq6_matches_feature_distances():
    method, data = _tiny_method()
    models = [method.build_model(seed=s) for s in range(3)]
    peers = [PeerModel(i, 1, (0, 1) if i < 2 else (1,), flat_parameters(m)) for i, m in enumerate(models)]
    flat, weights = method.aggregate(models[0], data, peers)
    with torch.no_grad():
        h = fuse(models[0](data.views), (0, 1))
        eps = []
        for i, m in enumerate(models):
            z = m(data.views)
            mods = (0, 1) if i < 2 else (1,)
            eps.append(sum(math.exp(torch.linalg.norm(z[v] - h).item()) for v in mods))
    eps = np.array(eps) / sum(eps)
    assert np.allclose([weights[i] for i in range(3)], eps, atol=1e-5)
    assert torch.allclose(flat, sum(float(e) * p.params for e, p in zip(eps, peers)), atol=1e-5)


def test_lineage_reading_weighs_peers_on_rms_distances():
    """The default reading: Eq. 6 with its printed sign on the distance ||Z_u^v - H||_F / sqrt(N)."""
    method, data = _tiny_method(reading="lineage")
    assert (
        method.cfg.eq6_sign,
        method.cfg.eq6_distance,
        method.cfg.reconstruction,
        method.cfg.embedding,
        method.cfg.pretrain_loss,
    ) == (1, "rms", "mse", "normalized", "reconstruction")
    models = [method.build_model(seed=s) for s in range(3)]
    peers = [PeerModel(i, 1, (0, 1), flat_parameters(m)) for i, m in enumerate(models)]
    _, weights = method.aggregate(models[0], data, peers)
    with torch.no_grad():
        h = fuse(models[0](data.views), (0, 1))
        eps = np.array(
            [
                sum(
                    math.exp(torch.linalg.norm(m(data.views)[v] - h).item() / math.sqrt(data.n_samples)) for v in (0, 1)
                )
                for m in models
            ]
        )
    assert np.allclose([weights[i] for i in range(3)], eps / eps.sum(), atol=1e-5)


def test_nontrivial_pairs_drop_the_constant_eq3_pair():
    """With G = {v}, h = z^v, so Eq. 3's (h, z^v) pair is constant; the lineage reading drops it."""
    method, data = _tiny_method(reading="lineage")
    model = method.build_model(seed=0)
    _, terms = method.loss(model, data.views, (0,))
    with torch.no_grad():
        z = model(data.views)
        expected = contrastive_loss(z[0], {1: z[1]}, method.cfg.tau)
    assert terms["loss_d"].item() == pytest.approx(expected.item(), rel=1e-6)
    _, terms = method.loss(model, {1: data.views[1]}, (1,))  # a one-modality client: no L_d at all
    assert "loss_d" not in terms and "loss_c" in terms
    _, both = method.loss(model, data.views, (0, 1))  # the full set keeps every pair
    with torch.no_grad():
        assert both["loss_d"].item() == pytest.approx(
            contrastive_loss(fuse(z, (0, 1)), z, method.cfg.tau).item(), rel=1e-6
        )


def test_reading_fills_only_the_keys_not_set():
    assert AFMCCConfig().reading == "lineage" and AFMCCConfig().eq6_distance == "rms"
    printed = AFMCCConfig(reading="printed")
    assert (
        printed.eq6_sign,
        printed.eq6_distance,
        printed.reconstruction,
        printed.embedding,
        printed.pretrain_loss,
    ) == (1, "frobenius", "printed", "fused", "full")
    assert AFMCCConfig(reading="printed", eq6_sign=-1).eq6_sign == -1  # an explicit key wins
    with pytest.raises(ValueError):
        AFMCCConfig(reading="literal")


def test_fusion_subsets_cover_alg2():
    method, _ = _tiny_method()
    assert method.fusion_subsets((0, 1)) == [(0,), (1,), (0, 1)]
    assert len(method.fusion_subsets((0, 1, 2, 3))) == 15
    short, _ = _tiny_method(fusion_subsets="full_and_single")
    assert short.fusion_subsets((0, 1, 2)) == [(0,), (1,), (2,), (0, 1, 2)]


def test_train_round_lowers_the_loss_and_is_seeded():
    method, data = _tiny_method(phi=20)
    runs = []
    for _ in range(2):
        model = method.build_model(seed=1)
        opt = method.make_optimizer(model)
        before, _ = method.loss(model, data.views, (0, 1))
        losses = method.train_round(model, opt, data, torch.Generator().manual_seed(0), RoundContext(1))
        after, _ = method.loss(model, data.views, (0, 1))
        runs.append(flat_parameters(model))
        assert after.item() < before.item()
        assert set(losses) == {"loss", "loss_r", "loss_d", "loss_c"}
    assert torch.equal(runs[0], runs[1])


def test_anchor_pulls_only_one_modality_clients_towards_the_round_start_model():
    """``anchor``: a one-modality client's round adds Eq. 3 between its z^v and the round-start
    model's z^v (loss_a); a full client's round and pretraining do not."""
    method, data = _tiny_method(reading="lineage", anchor=1.0)
    single = LocalData(0, {1: data.views[1]}, data.labels, data.indices)
    model = method.build_model(seed=0)
    start = method.build_model(seed=0)
    losses = method.train_round(
        model, method.make_optimizer(model), single, torch.Generator().manual_seed(0), RoundContext(1)
    )
    assert "loss_a" in losses and losses["loss_a"] > 0
    # the anchor is the round-start model's embedding: the first step's loss_a is Eq. 3 of z against itself
    with torch.no_grad():
        z = start({1: single.views[1]})[1]
    assert contrastive_loss(z, {1: z}, method.cfg.tau).item() == pytest.approx(
        method.loss(start, single.views, (1,), anchor=z)[1]["loss_a"].item()
    )
    full = method.train_round(
        model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(1)
    )
    assert "loss_a" not in full
    pre = method.train_round(
        model, method.make_optimizer(model), single, torch.Generator().manual_seed(0), RoundContext(0, "pretrain", 1)
    )
    assert "loss_a" not in pre
    assert AFMCCConfig(reading="lineage").anchor == 0.0 and AFMCCConfig(reading="printed").anchor == 0.0
    off, _ = _tiny_method(reading="lineage")
    plain = off.build_model(seed=0)
    assert "loss_a" not in off.train_round(
        plain, off.make_optimizer(plain), single, torch.Generator().manual_seed(0), RoundContext(1)
    )


def test_ablation_switches_drop_terms():
    method, data = _tiny_method(use_contrastive=False, use_constraint=False)
    model = method.build_model(seed=0)
    total, terms = method.loss(model, data.views, (0,))
    assert set(terms) == {"loss_r"} and total.item() == pytest.approx(terms["loss_r"].item())


def test_reconstruction_pretraining_trains_on_eq2_alone():
    """pretrain_loss="reconstruction" (FMCSC's pretraining): Alg. 1's rounds optimise L_r only;
    the W of Eq. 4 gets no gradient there, and ordinary rounds still use all of Eq. 7."""
    method, data = _tiny_method(pretrain_loss="reconstruction")
    model = method.build_model(seed=0)
    w_before = model.projection.weight.detach().clone()
    losses = method.train_round(
        model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(0, "pretrain", 1)
    )
    assert set(losses) == {"loss", "loss_r"} and losses["loss"] == pytest.approx(losses["loss_r"])
    assert torch.equal(model.projection.weight, w_before)
    losses = method.train_round(
        model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(1, "train", 1)
    )
    assert set(losses) == {"loss", "loss_r", "loss_d", "loss_c"}
    assert not torch.equal(model.projection.weight, w_before)


def test_normalized_embedding_has_unit_rows_and_keeps_directions():
    fused, data = _tiny_method()
    unit, _ = _tiny_method(embedding="normalized")
    model = fused.build_model(seed=0)
    raw, normed = fused.embed(model, data), unit.embed(model, data)
    assert np.allclose(np.linalg.norm(normed, axis=1), 1.0, atol=1e-6)
    assert np.allclose(normed, raw / np.linalg.norm(raw, axis=1, keepdims=True), atol=1e-6)


def test_flat_roundtrip_and_unflatten_views():
    method, _ = _tiny_method()
    a, b = method.build_model(seed=0), method.build_model(seed=1)
    load_flat_parameters(b, flat_parameters(a))
    assert torch.equal(flat_parameters(a), flat_parameters(b))
    views = unflatten(a, flat_parameters(a))
    assert all(views[n].shape == p.shape for n, p in a.named_parameters())


def test_eq6_peer_reference_is_uniform_for_single_modality_clients():
    method, data = _tiny_method(eq6_reference="peer")
    single = LocalData(0, {1: data.views[1]}, data.labels, data.indices)
    models = [method.build_model(seed=s) for s in range(3)]
    peers = [PeerModel(i, 1, (0, 1), flat_parameters(m)) for i, m in enumerate(models)]
    _, weights = method.aggregate(models[0], single, peers)
    assert weights == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})
    # a two-modality client weighs each peer by how far its modalities sit from its own fusion
    _, weights = method.aggregate(models[0], data, peers)
    with torch.no_grad():
        eps = []
        for m in models:
            z = m(data.views)
            h_u = fuse(z, (0, 1))
            eps.append(sum(math.exp(torch.linalg.norm(z[v] - h_u).item()) for v in (0, 1)))
    assert np.allclose([weights[i] for i in range(3)], np.array(eps) / sum(eps), atol=1e-5)


def test_aggregated_evaluation_clusters_what_eq6_makes_of_everyone_s_uploads():
    """``evaluated_model="aggregated"``: a client is evaluated with Eq. 6 applied to every client's
    latest upload (FMCSC's protocol evaluates the aggregated model), not with its own upload."""
    from fedsim.config import build_config
    from fedsim.runtime.client import ClientActor
    from fedsim.runtime.server import Snapshot, StoreEntry
    from tests.conftest import SMALL_SYNTHETIC

    raw = dict(SMALL_SYNTHETIC) | {"method": "afmcc"}
    raw["afmcc"] = {**SMALL_SYNTHETIC["afmcc"], "evaluated_model": "aggregated"}
    cfg = build_config(raw, []).model_dump(mode="json")
    u = cfg["num_clients"]
    actor = ClientActor(cfg, list(range(u)))
    assert actor.describe()[0]["evaluates_aggregate"]
    rng = np.random.default_rng(0)
    init = actor.initial_parameters(0)
    uploads = [init + rng.normal(0, 0.05, init.shape).astype(np.float32) for _ in range(u)]
    snapshot = Snapshot(
        tuple(
            StoreEntry(c, 1, tuple(actor.clients[c].data.modalities), None, actor.clients[c].data.n_samples)
            for c in range(u)
        ),
        u,
    )
    got = actor.embed(0, uploads[0], snapshot, *uploads)["features"]
    client = actor.clients[0]
    model = client.method.build_model(seed=0)
    load_flat_parameters(model, torch.from_numpy(uploads[0]))
    peers = [
        PeerModel(
            c, 1, tuple(actor.clients[c].data.modalities), torch.from_numpy(uploads[c]), actor.clients[c].data.n_samples
        )
        for c in range(u)
    ]
    aggregated, weights = client.method.aggregate(model, client.data, peers)
    load_flat_parameters(model, aggregated)
    np.testing.assert_allclose(got, client.method.embed(model, client.data), atol=1e-6)
    assert not np.allclose(got, actor.embed(0, uploads[0])["features"], atol=1e-3)  # not the client's own upload
    assert len(weights) == u
    # the lineage reading (the default) evaluates the aggregate, the printed one the upload
    assert AFMCC(AFMCCConfig(), (4, 3), 2, 2).evaluates_aggregate
    assert not AFMCC(AFMCCConfig(reading="printed"), (4, 3), 2, 2).evaluates_aggregate
