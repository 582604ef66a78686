"""FMCSC (fedsim/methods/fmcsc.py): losses and the MI weight against naive computations, the
per-pattern aggregation, and one round of each client kind on tiny synthetic tensors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedsim.config import build_config, load_config
from fedsim.errors import ConfigError
from fedsim.methods import get_method
from fedsim.methods.base import (
    LocalData,
    PeerModel,
    RoundContext,
    flat_parameters,
    load_flat_parameters,
    parameter_segments,
)
from fedsim.methods.fmcsc import FMCSC, FMCSCConfig, histogram_mutual_information, moon_loss, nt_xent
from fedsim.sweeps.grid import load_grid
from fedsim.sweeps.tune_runner import sweep_base

ROOT = Path(__file__).resolve().parents[1]
DIMS = (6, 4)
TINY = dict(
    feature_dim=4, head_dim=4, hidden=[8, 8], head_width=8, main_epochs=2, distill_epochs=3, pretrain_epochs_per_round=2
)


def _method(view_dims=DIMS, **overrides) -> FMCSC:
    return FMCSC(FMCSCConfig(**{**TINY, **overrides}), view_dims, n_clusters=3, num_clients=4)


def _data(modalities, n=12, seed=0, view_dims=DIMS, cid=0) -> LocalData:
    g = torch.Generator().manual_seed(seed)
    views = {v: torch.rand(n, view_dims[v], generator=g) for v in modalities}
    return LocalData(cid, views, np.arange(n) % 3, np.arange(n))


def _block(model, prefix):
    segs = [(s, e) for name, s, e in parameter_segments(model) if name.startswith(prefix)]
    return segs[0][0], segs[-1][1]


# -- losses ---------------------------------------------------------------------------------------


def test_nt_xent_against_a_naive_loop():
    g = torch.Generator().manual_seed(1)
    r, h = torch.randn(5, 3, generator=g), F.normalize(torch.randn(5, 3, generator=g), dim=1)
    tau, n = 0.5, 5
    rows = torch.cat([r, h]).double()
    expected = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        den = sum(math.exp(float(rows[i] @ rows[k]) / tau) for k in range(2 * n) if k != i)
        expected -= math.log(math.exp(float(rows[i] @ rows[pos]) / tau) / den)
    assert nt_xent(r, h, tau).item() == pytest.approx(expected / (2 * n), rel=1e-5)


def test_moon_loss_against_a_naive_loop():
    g = torch.Generator().manual_seed(2)
    glob_h, h, z = (torch.randn(4, 3, generator=g) for _ in range(3))
    tau, expected = 0.5, 0.0
    for i in range(4):
        a = float(F.cosine_similarity(glob_h[i], h[i], dim=0)) / tau
        b = float(F.cosine_similarity(h[i], z[i], dim=0)) / tau
        expected -= math.log(math.exp(a) / (math.exp(a) + math.exp(b)))
    assert moon_loss(glob_h, h, z, tau).item() == pytest.approx(expected / 4, rel=1e-5)


def test_histogram_mi_against_a_direct_computation():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(30, 4, generator=g)
    b = a + 0.5 * torch.randn(30, 4, generator=g)
    x, y = a.flatten().double().numpy(), b.flatten().double().numpy()
    bins = 10
    ex = np.linspace(x.min(), x.max(), bins + 1)
    ey = np.linspace(y.min(), y.max(), bins + 1)
    counts = np.zeros((bins, bins))

    def bin_of(edges, value):  # the last bin includes its right edge, as numpy's does
        return min(int(np.searchsorted(edges, value, side="right")) - 1, bins - 1)

    for xi, yi in zip(x, y):
        counts[bin_of(ex, xi), bin_of(ey, yi)] += 1
    joint = counts / counts.sum()
    pa, pb = joint.sum(1), joint.sum(0)
    expected = 0.0
    for i in range(bins):
        for j in range(bins):
            pij = joint[i, j] if joint[i, j] > 0 else 1e-10
            expected += pij * math.log2(pij / ((pa[i] or 1e-10) * (pb[j] or 1e-10)))
    assert histogram_mutual_information(a, b) == pytest.approx(expected, rel=1e-4, abs=1e-6)
    assert histogram_mutual_information(a, a) > histogram_mutual_information(a, b) > 0


# -- aggregation ----------------------------------------------------------------------------------


def test_aggregate_is_the_weighted_average_per_pattern():
    method = _method()
    model = method.build_model(seed=0)
    n_flat = flat_parameters(model).numel()
    ((ws, we),) = [(s, e) for name, s, e in parameter_segments(model) if name == "pattern_weights"]
    g = torch.Generator().manual_seed(4)
    weights = [[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.0, 1.0, 0.0]]
    peers = []
    for cid, w in enumerate(weights):
        flat = torch.randn(n_flat, generator=g)
        flat[ws:we] = torch.tensor(w)
        flat[slice(*_block(model, "chain"))] = 0.0  # last round 0, parallel order
        peers.append(PeerModel(cid, 1, (0, 1), flat))
    own_before = flat_parameters(model)
    out, logged = method.aggregate(model, _data((0, 1)), peers)
    for p in range(3):
        s, e = _block(model, f"patterns.{p}.")
        w = torch.tensor([row[p] for row in weights])
        expected = sum(wi / w.sum() * peer.params[s:e] for wi, peer in zip(w, peers))
        assert torch.allclose(out[s:e], expected, atol=1e-6)
    s, e = _block(model, "patterns.2.")
    assert torch.equal(out[s:e], peers[0].params[s:e])  # the zero-weight uploads are ignored
    s, e = _block(model, "local.")
    assert torch.equal(out[s:e], own_before[s:e])  # the client's own local model stays
    assert logged == pytest.approx({0: 2 / 3, 1: 1 / 3, 2: 0.0})  # a full client logs pattern 0


def test_aggregate_guard_when_the_weights_sum_to_zero():
    method = _method()
    model = method.build_model(seed=0)
    ((ws, we),) = [(s, e) for name, s, e in parameter_segments(model) if name == "pattern_weights"]
    g = torch.Generator().manual_seed(5)
    peers = []
    for cid, w in enumerate([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]):
        flat = torch.randn(flat_parameters(model).numel(), generator=g)
        flat[ws:we] = torch.tensor(w)
        flat[slice(*_block(model, "chain"))] = 0.0
        peers.append(PeerModel(cid, 1, (0, 1), flat))
    out, _ = method.aggregate(model, _data((0,)), peers)
    s, e = _block(model, "patterns.0.")  # cancelling weights: plain mean over the non-zero ones
    assert torch.allclose(out[s:e], (peers[0].params[s:e] + peers[1].params[s:e]) / 2, atol=1e-6)
    s, e = _block(model, "patterns.1.")  # no weight at all: plain mean over every upload
    assert torch.allclose(out[s:e], sum(p.params[s:e] for p in peers) / 3, atol=1e-6)


def _chain_peers(method, model, rounds, flags, modalities, seed=7):
    """Random uploads of clients with the given (round, sequential flag) chain slots."""
    g = torch.Generator().manual_seed(seed)
    ((ws, we),) = [(s, e) for name, s, e in parameter_segments(model) if name == "pattern_weights"]
    peers = []
    for cid, (r, f, mods) in enumerate(zip(rounds, flags, modalities)):
        flat = torch.randn(flat_parameters(model).numel(), generator=g)
        flat[ws:we] = torch.rand(we - ws, generator=g) + 0.5
        flat[slice(*_block(model, "chain"))] = torch.tensor([float(r), float(f)])
        peers.append(PeerModel(cid, r, mods, flat))
    return peers


def test_sequential_order_takes_the_rounds_globals_and_continues_the_shared_models():
    """round_order=sequential, round 2: clients 0 (full) and 2 (view 0) already trained in it;
    a full client continues client 0's trained model, a single-view client the model the last
    single-view client left, and both start the other patterns from the globals client 0 carries."""
    method = _method()
    model = method.build_model(seed=0)
    mods = [(0, 1), (0, 1), (0,), (1,), (1,)]
    peers = _chain_peers(method, model, rounds=[2, 1, 2, 1, 1], flags=[1, 1, 1, 1, 1], modalities=mods)
    load_flat_parameters(model, peers[1].params.clone())  # client 1's own last upload: round 1
    out, _ = method.aggregate(model, _data((0, 1), cid=1), peers)
    s_local, e_local = _block(model, "local.")
    for p in range(3):
        s, e = _block(model, f"patterns.{p}.")
        ss, se = _block(model, f"start.{p}.")
        assert torch.equal(out[ss:se], peers[0].params[ss:se])  # the round's globals, carried on
        expected = peers[0].params[s_local:e_local] if p == 0 else peers[0].params[ss:se]
        assert torch.equal(out[s:e], expected)
    assert out[slice(*_block(model, "chain"))].tolist() == [1.0, 1.0]  # own last round (train_round sets it), flag
    # client 4 (view 1): the shared single-view model is client 2's, trained this round
    load_flat_parameters(model, peers[4].params.clone())
    out, _ = method.aggregate(model, _data((1,), cid=4), peers)
    assert torch.equal(out[s_local:e_local], peers[2].params[s_local:e_local])
    s, e = _block(model, "patterns.2.")
    assert torch.equal(out[s:e], peers[0].params[slice(*_block(model, "start.2."))])
    # client 2 in round 2 (before it trained): the last single-view client of round 1 is client 4
    peers_before = _chain_peers(method, model, rounds=[2, 2, 1, 1, 1], flags=[1] * 5, modalities=mods)
    load_flat_parameters(model, peers_before[2].params.clone())
    out, _ = method.aggregate(model, _data((0,), cid=2), peers_before)
    assert torch.equal(out[s_local:e_local], peers_before[4].params[s_local:e_local])


def test_sequential_order_aggregates_the_shared_single_view_model():
    """At a round's end (everyone at round 1, sequential flag set) a single-view upload counts as
    the shared model the last single-view client left, with the weight it computed itself."""
    method = _method()
    model = method.build_model(seed=0)
    mods = [(0, 1), (0,), (0,)]
    peers = _chain_peers(method, model, rounds=[1, 1, 1], flags=[0, 1, 1], modalities=mods)
    load_flat_parameters(model, peers[0].params.clone())
    out, _ = method.aggregate(model, _data((0, 1), cid=0), peers)
    ((ws, we),) = [(s, e) for name, s, e in parameter_segments(model) if name == "pattern_weights"]
    s_local, e_local = _block(model, "local.")
    s, e = _block(model, "patterns.1.")
    w = torch.stack([p.params[ws:we][1] for p in peers])
    shared = peers[2].params[s_local:e_local]
    expected = (w[0] * peers[0].params[s:e] + (w[1] + w[2]) * shared) / w.sum()
    assert torch.allclose(out[s:e], expected, atol=1e-5)
    s, e = _block(model, "patterns.0.")  # the full pattern: every upload as it is
    w0 = torch.stack([p.params[ws:we][0] for p in peers])
    assert torch.allclose(out[s:e], sum(wi * p.params[s:e] for wi, p in zip(w0, peers)) / w0.sum(), atol=1e-5)


# -- rounds -----------------------------------------------------------------------------------------


def _nets_equal(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))


def test_pretrain_round_trains_and_leaves_every_slot_equal():
    method = _method()
    model = method.build_model(seed=0)
    before = flat_parameters(model.local)
    losses = method.train_round(
        model,
        method.make_optimizer(model),
        _data((1,)),
        torch.Generator().manual_seed(0),
        RoundContext(0, "pretrain", 3),
    )
    assert math.isfinite(losses["loss_r"])
    assert not torch.equal(before, flat_parameters(model.local))
    assert all(_nets_equal(net, model.local) for net in model.patterns)
    assert model.pattern_weights.tolist() == [1.0, 1.0, 1.0]


def test_full_client_round():
    method = _method(distill_epochs=1)  # one epoch: the MI weights come from the round-start globals
    model = method.build_model(seed=0)
    method.train_round(
        model, method.make_optimizer(model), _data((0, 1)), torch.Generator(), RoundContext(0, "pretrain", 1)
    )
    start = method.build_model(seed=1)
    load_flat_parameters(start, flat_parameters(model).clone())
    data = _data((0, 1), seed=7)
    losses = method.train_round(model, None, data, torch.Generator().manual_seed(0), RoundContext(1, "train", 5))
    assert all(math.isfinite(v) for v in losses.values())
    assert {"loss_feature", "loss_r", "distill_loss_h", "distill_loss_r"} <= set(losses)
    assert not _nets_equal(model.local, start.patterns[0])
    assert all(not _nets_equal(a, b) for a, b in zip(model.patterns, start.patterns))
    xs = [data.views[0], data.views[1]]
    with torch.no_grad():
        full = start.patterns[0](xs)
        expected = [sum(histogram_mutual_information(full.h, r) for r in full.r)]
        for v in (0, 1):
            masked = [x if i == v else torch.zeros_like(x) for i, x in enumerate(xs)]
            out = start.patterns[1 + v](masked)
            expected.append(histogram_mutual_information(out.h, out.h) - histogram_mutual_information(out.h, out.z[v]))
    assert model.pattern_weights.tolist() == pytest.approx(expected, rel=1e-5)
    assert losses["mi_weight_full"] == pytest.approx(expected[0], rel=1e-5)


def test_single_client_uploads_nothing_in_round_one_then_its_local_model():
    method = _method()
    model = method.build_model(seed=0)
    data = _data((1,), seed=8)
    start = flat_parameters(model).clone()
    losses = method.train_round(model, None, data, torch.Generator().manual_seed(0), RoundContext(1, "train", 5))
    assert all(math.isfinite(v) for v in losses.values()) and "loss_model" in losses
    assert model.pattern_weights.tolist() == [0.0, 0.0, 0.0]
    ref = method.build_model(seed=1)
    load_flat_parameters(ref, start)
    assert not _nets_equal(model.local, ref.local)
    assert all(_nets_equal(a, b) for a, b in zip(model.patterns, ref.patterns))  # slots untouched
    glob_before = flat_parameters(model.patterns[2]).clone()
    method.train_round(model, None, data, torch.Generator().manual_seed(0), RoundContext(2, "train", 5))
    load_flat_parameters(ref.patterns[2], glob_before)
    xs = [torch.zeros(12, DIMS[0]), data.views[1]]
    with torch.no_grad():
        out, glob_h = model.local(xs), ref.patterns[2](xs).h
    expected = histogram_mutual_information(out.h, glob_h) - histogram_mutual_information(out.h, out.z[1])
    w = model.pattern_weights.tolist()
    assert w[0] == 0.0 and w[1] == 0.0 and w[2] == pytest.approx(expected, rel=1e-5)
    assert _nets_equal(model.patterns[2], model.local)


def test_constraint_trains_and_carries_the_projection():
    method = _method(constraint_weight=0.01)
    model = method.build_model(seed=0)
    w_before = model.patterns[0].projection.weight.clone()
    losses = method.train_round(model, None, _data((0, 1)), torch.Generator(), RoundContext(1, "train", 5))
    assert math.isfinite(losses["loss_c"])
    assert not torch.equal(model.local.projection.weight, w_before)
    assert torch.equal(model.patterns[0].projection.weight, model.local.projection.weight)


def test_round_is_deterministic_in_the_seed():
    method = _method(batch_size=5)  # minibatches: the generator orders them
    results = []
    for _ in range(2):
        model = method.build_model(seed=3)
        method.train_round(model, None, _data((0, 1)), torch.Generator().manual_seed(9), RoundContext(1, "train", 5))
        results.append(flat_parameters(model))
    assert torch.equal(results[0], results[1])
    assert not torch.equal(flat_parameters(method.build_model(seed=3)), flat_parameters(method.build_model(seed=4)))


def test_embed_uses_the_own_patterns_global():
    method = _method()
    model = method.build_model(seed=0)
    torch.nn.init.normal_(model.patterns[1].fusion[0].weight)
    data = _data((0,))
    with torch.no_grad():
        expected = model.patterns[1]([data.views[0], torch.zeros(12, DIMS[1])]).h.numpy()
    assert np.allclose(method.embed(model, data), expected)
    assert method.soft_assignments(model, data) is None


def test_clients_with_some_but_not_all_views_are_refused():
    method = _method(view_dims=(6, 4, 5))
    model = method.build_model(seed=0)
    data = _data((0, 2), view_dims=(6, 4, 5))
    with pytest.raises(ConfigError, match="all 3 views or one view"):
        method.train_round(model, None, data, torch.Generator(), RoundContext(1, "train", 5))
    with pytest.raises(ConfigError):
        method.round_cost(data, 4)
    with pytest.raises(ValueError, match="feature_dim"):
        FMCSCConfig(feature_dim=20, head_dim=10)


def test_round_cost_counts_pretraining_full_and_single_rounds():
    method = _method()
    full, single = _data((0, 1)), _data((1,))
    assert method.round_cost(full, 0) == 12 * 3 * 2
    assert method.round_cost(full, 4) == 12 * (3 * 2 + 1 + 3 * (3 * 3 + 1))
    assert method.round_cost(single, 4) == 12 * (4 * 2 + 2)


# -- registry, configs and grids ------------------------------------------------------------------


def test_registry_configs_and_grids():
    assert get_method("fmcsc") is FMCSC and FMCSC.evaluates_aggregate
    for name, clients, epochs in (("bdgp", 12, 10), ("mnist_usps", 24, 25)):
        cfg = load_config(ROOT / "configs" / "fmcsc" / f"{name}.yaml")
        assert (cfg.num_clients, cfg.rounds, cfg.kmeans_n_init, cfg.pretrain.schedule) == (clients, 5, 100, "chain")
        params = FMCSCConfig(**cfg.method_params)
        assert params.main_epochs == epochs and cfg.pretrain.rounds * params.pretrain_epochs_per_round == 250
    spec = load_grid("fmcsc", "table2")
    assert len(spec.trials) == 15 and spec.paper["bdgp"]["1:1"]["acc"] == [91.9, 1.2]
    spec = load_grid("fmcsc", "table3c")
    base, overrides = sweep_base(spec, "bdgp")
    cfgs = {(t["steps"], t["constraint"]): build_config(base, overrides + spec.trial_overrides(t)) for t in spec.trials}
    assert cfgs[(800, "HC")].method_params["main_epochs"] == 800
    assert cfgs[(800, "HC")].method_params["constraint_weight"] == 0.01
    assert cfgs[(200, "UC")].method_params["constraint_weight"] == 0.0
    assert spec.paper["bdgp"]["800|UC"]["acc"] == 81.65


def test_an_in_process_federation_follows_the_runtime_protocol():
    """The runtime's sequence without Ray: chained pretraining, rounds that load the client's own
    upload, aggregate everyone's and train, then evaluation on the aggregate (evaluates_aggregate)."""
    method = _method()
    datas = [
        _data((0, 1), seed=10, cid=0),
        _data((0, 1), seed=11, cid=1),
        _data((0,), seed=12, cid=2),
        _data((1,), seed=13, cid=3),
    ]
    models = [method.build_model(seed=100 + c) for c in range(4)]
    optimizers = [method.make_optimizer(m) for m in models]
    flat = flat_parameters(models[0]).clone()
    for c in range(4):  # pretrain.schedule: chain, 2 rounds per client
        load_flat_parameters(models[c], flat.clone())
        for r in (1, 2):
            method.train_round(
                models[c], optimizers[c], datas[c], torch.Generator().manual_seed(r), RoundContext(r, "pretrain", 2)
            )
        flat = flat_parameters(models[c]).clone()
    store = [flat.clone() for _ in range(4)]
    for rnd in (1, 2):
        peers = [PeerModel(c, rnd - 1, datas[c].modalities, store[c]) for c in range(4)]
        uploads = []
        for c in range(4):
            load_flat_parameters(models[c], store[c].clone())
            aggregated, _ = method.aggregate(models[c], datas[c], peers)
            if rnd == 1:  # every entry is the pretrained model with weights 1: the identity
                assert torch.allclose(aggregated, store[c], atol=1e-6)
            load_flat_parameters(models[c], aggregated)
            losses = method.train_round(
                models[c], optimizers[c], datas[c], torch.Generator().manual_seed(rnd), RoundContext(rnd, "train", 2)
            )
            assert all(math.isfinite(v) for v in losses.values())
            uploads.append(flat_parameters(models[c]).clone())
        store = uploads
    assert all(w != 0 for w in models[0].pattern_weights.tolist())
    assert all(m.chain.tolist() == [2.0, 0.0] for m in models)  # round 2's uploads, parallel order
    assert models[2].pattern_weights.tolist()[1] != 0 and models[3].pattern_weights.tolist()[2] != 0
    peers = [PeerModel(c, 2, datas[c].modalities, store[c]) for c in range(4)]
    for c in range(4):
        model = method.build_model(seed=0)
        load_flat_parameters(model, store[c].clone())
        aggregated, _ = method.aggregate(model, datas[c], peers)
        load_flat_parameters(model, aggregated)
        features = method.embed(model, datas[c])
        assert features.shape == (12, 4) and np.allclose(np.linalg.norm(features, axis=1), 1.0, atol=1e-5)
