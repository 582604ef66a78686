"""CMMC (../shared/papers/001_b81cb3a7ef114d66.txt): every loss against a hand computation, the
Hungarian pseudo-label matching, the stages of Algorithm 1, and tiny runs through the runtime."""

from __future__ import annotations

import copy
import itertools
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.errors import ConfigError
from fedsim.methods.base import LocalData, PeerModel, RoundContext, flat_parameters, load_flat_parameters
from fedsim.methods.cmmc import (
    CMMC,
    CMMCConfig,
    cluster_balance_term,
    feature_contrastive_loss,
    label_contrastive_loss,
    match_pseudo_labels,
    modality_of,
    pseudo_label_cross_entropy,
    reconstruction_loss,
)

ROOT = Path(__file__).resolve().parents[1]


def _cos(a, b):
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------------------------------------
# Losses by hand


def test_reconstruction_loss_by_hand():  # Eq. 1
    x = {0: torch.tensor([[1.0, 0.0], [0.0, 1.0]]), 1: torch.tensor([[2.0], [0.0]])}
    x_hat = {0: torch.tensor([[0.0, 0.0], [0.0, 0.0]]), 1: torch.tensor([[1.0], [3.0]])}
    # printed: sum over modalities, samples and features, no 1/N: (1 + 1) + (1 + 9)
    assert reconstruction_loss(x, x_hat).item() == pytest.approx(12.0)
    # MSE reading (code lineage): per modality the mean over samples and features
    assert reconstruction_loss(x, x_hat, "mse").item() == pytest.approx(2 / 4 + 10 / 2)


def _eq3_by_hand(reps: dict[int, np.ndarray], tau: float) -> float:
    """Eqs. 3-4 (and Eq. 8 on columns) written out term by term."""
    total = 0.0
    for m in reps:
        rows = reps[m].shape[0]
        loss_m = 0.0
        for n in reps:
            if n == m:
                continue
            for i in range(rows):
                num = math.exp(_cos(reps[m][i], reps[n][i]) / tau)
                den = sum(math.exp(_cos(reps[m][i], reps[n][j]) / tau) for j in range(rows))
                den += sum(math.exp(_cos(reps[m][i], reps[m][j]) / tau) for j in range(rows) if j != i)
                loss_m += math.log(num / den)
        total += -loss_m / (2 * rows)
    return total


def test_feature_contrastive_loss_by_hand():  # Eqs. 2-4, three modalities
    h = {
        0: np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]),
        1: np.array([[2.0, 0.1], [0.3, 1.0], [1.0, -1.0]]),
        2: np.array([[1.0, 1.0], [-1.0, 0.5], [0.2, 0.9]]),
    }
    tau = 0.5
    got = feature_contrastive_loss({v: torch.tensor(a) for v, a in h.items()}, tau)
    assert got.item() == pytest.approx(_eq3_by_hand(h, tau), rel=1e-9)


def test_label_contrastive_loss_by_hand():  # Eq. 8: contrast of the cluster columns Q_.j^m
    rng = np.random.default_rng(0)
    q = {v: rng.dirichlet(np.ones(3), size=4) for v in (0, 1)}  # N=4 samples, K=3 clusters
    tau = 1.0
    expected = 0.0
    for m in q:
        for n in q:
            if n == m:
                continue
            for j in range(3):
                num = math.exp(_cos(q[m][:, j], q[n][:, j]) / tau)
                den = sum(math.exp(_cos(q[m][:, j], q[n][:, k]) / tau) for k in range(3))
                den += sum(math.exp(_cos(q[m][:, j], q[m][:, k]) / tau) for k in range(3) if k != j)
                expected -= math.log(num / den) / (2 * 3)
    got = label_contrastive_loss({v: torch.tensor(a) for v, a in q.items()}, tau)
    assert got.item() == pytest.approx(expected, rel=1e-9)


def test_contrast_vanishes_for_one_modality():  # the sums over n != m are empty
    h = {1: torch.randn(5, 3, generator=torch.Generator().manual_seed(0))}
    assert feature_contrastive_loss(h, 0.5).item() == 0.0
    assert label_contrastive_loss({1: torch.softmax(h[1], 1)}, 1.0).item() == 0.0


def test_cluster_balance_term_by_hand():  # Eq. 9, second part
    q = {0: np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]), 1: np.array([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]])}
    expected = 0.0
    for qv in q.values():
        for j in range(3):
            s = (qv[0, j] + qv[1, j]) / 2
            expected += s * math.log(s) if s > 0 else 0.0  # 0 log 0 = 0
    got = cluster_balance_term({v: torch.tensor(a) for v, a in q.items()})
    assert got.item() == pytest.approx(expected, rel=1e-9)
    # balanced clusters minimise it: -log K per modality
    uniform = torch.full((6, 3), 1 / 3, dtype=torch.float64)
    assert cluster_balance_term({0: uniform}).item() == pytest.approx(-math.log(3))


def test_pseudo_label_cross_entropy_by_hand():  # Eq. 14
    q = {0: np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]), 1: np.array([[0.3, 0.3, 0.4], [0.5, 0.25, 0.25]])}
    targets = {0: np.array([0, 2]), 1: np.array([2, 1])}
    expected = -(math.log(0.7) + math.log(0.1) + math.log(0.4) + math.log(0.25))
    got = pseudo_label_cross_entropy(
        {v: torch.log(torch.tensor(a)) for v, a in q.items()}, {v: torch.tensor(t) for v, t in targets.items()}
    )
    assert got.item() == pytest.approx(expected, rel=1e-9)


# ---------------------------------------------------------------------------------------------
# Hungarian matching (Eq. 13)


def test_matching_recovers_a_permuted_labelling_exactly():
    rng = np.random.default_rng(1)
    predictions = rng.integers(0, 5, size=200)
    permutation = np.array([3, 0, 4, 1, 2])
    pseudo = permutation[predictions]  # the same clustering under other ids
    assert np.array_equal(match_pseudo_labels(predictions, pseudo, 5), predictions)


def test_matching_solves_eq13_by_brute_force():
    rng = np.random.default_rng(2)
    predictions = rng.integers(0, 4, size=60)
    pseudo = np.where(rng.random(60) < 0.6, (predictions + 1) % 4, rng.integers(0, 4, size=60))
    counts = np.zeros((4, 4))
    for a, b in zip(predictions, pseudo):
        counts[a, b] += 1  # C~_ij = #{prediction i, pseudo j}
    cost = counts.max() - counts
    best = min(itertools.permutations(range(4)), key=lambda perm: sum(cost[perm[s], s] for s in range(4)))
    expected = np.array([best[s] for s in pseudo])  # A[k, s] = 1 with k = best[s]
    assert np.array_equal(match_pseudo_labels(predictions, pseudo, 4), expected)


# ---------------------------------------------------------------------------------------------
# The method on a tiny model


def _tiny_method(**overrides) -> tuple[CMMC, LocalData]:
    cfg = CMMCConfig(
        **{
            "encoder_hidden": [16],
            "latent_dim": 8,
            "head_hidden": 8,
            "feature_dim": 4,
            "batch_size": 8,
            "pretrain_epochs": 2,
            "contrastive_epochs": 2,
            "finetune_epochs": 2,
            "kmeans_n_init": 2,
            **overrides,
        }
    )
    method = CMMC(cfg, view_dims=(5, 3), n_clusters=3, num_clients=1)
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 8, generator=g) * 3
    labels = torch.arange(20) % 3
    base = centres[labels] + 0.3 * torch.randn(20, 8, generator=g)
    views = {0: base[:, :5].contiguous(), 1: base[:, 5:].contiguous()}
    return method, LocalData(0, views, labels.numpy(), np.arange(20))


def test_stage_follows_the_round():  # Algorithm 1: E_p, then E_c, then E_f rounds
    method, _ = _tiny_method(pretrain_epochs=3, contrastive_epochs=2, finetune_epochs=4)
    stages = [method.stage(RoundContext(r, "train", 9)) for r in range(1, 10)]
    assert stages == ["pretrain"] * 3 + ["contrastive"] * 2 + ["finetune"] * 4
    assert method.stage(RoundContext(12, "train", 9)) == "finetune"  # group / sim_time stop rules
    assert method.stage(RoundContext(0, "pretrain", 50)) == "pretrain"  # the runtime's pretraining
    with pytest.raises(ConfigError, match="rounds=9"):  # the driver checks it before Ray starts
        method.check_run(240, [])


def _train(method, data, round_, total=6, seed=0, model=None, opt=None):
    model = model if model is not None else method.build_model(seed=1)
    opt = opt if opt is not None else method.make_optimizer(model)
    out = method.train_round(
        model, opt, data, torch.Generator().manual_seed(seed), RoundContext(round_, "train", total)
    )
    return model, opt, out


@pytest.mark.parametrize("round_,stage", [(1, "pretrain"), (3, "contrastive"), (5, "finetune")])
def test_train_round_lowers_the_loss_and_is_seeded(round_, stage):
    method, data = _tiny_method()
    runs = []
    for _ in range(2):
        method.pseudo_targets = None
        model = method.build_model(seed=1)
        opt = method.make_optimizer(model)
        g = torch.Generator().manual_seed(0)
        if stage == "finetune":  # fix the pseudo-labels first, as the round would
            method.pseudo_targets = method.compute_pseudo_targets(model, data, seed=0)
        before = method.loss(model, data.views, stage, method.pseudo_targets)[0].item()
        for _ in range(15):
            losses = method.train_round(model, opt, data, g, RoundContext(round_, "train", 6))
        after = method.loss(model, data.views, stage, method.pseudo_targets)[0].item()
        assert after < before, (stage, before, after)
        assert losses["stage"] == ("pretrain", "contrastive", "finetune").index(stage)
        runs.append(flat_parameters(model))
    assert torch.equal(runs[0], runs[1])
    # another shuffling seed is another run
    method.pseudo_targets = None
    other = method.build_model(seed=1)
    if stage == "finetune":
        method.pseudo_targets = method.compute_pseudo_targets(other, data, seed=0)
    method.train_round(
        other, method.make_optimizer(other), data, torch.Generator().manual_seed(5), RoundContext(round_, "train", 6)
    )
    once = method.build_model(seed=1)
    method.train_round(
        once, method.make_optimizer(once), data, torch.Generator().manual_seed(0), RoundContext(round_, "train", 6)
    )
    assert not torch.equal(flat_parameters(other), flat_parameters(once))


def test_contrastive_round_reports_eq10_terms():
    method, data = _tiny_method()
    model = method.build_model(seed=0)
    total, terms = method.contrastive_loss(model, data.views)
    assert set(terms) == {"loss_lc_contrast", "loss_balance", "loss_lc", "loss_fc", "loss_r"}
    assert terms["loss_lc"].item() == pytest.approx(
        terms["loss_lc_contrast"].item() + terms["loss_balance"].item(), rel=1e-6
    )
    assert total.item() == pytest.approx(
        terms["loss_lc"].item() + terms["loss_fc"].item() + terms["loss_r"].item(), rel=1e-6
    )


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (
            {"use_feature_contrastive": False, "use_reconstruction": False},
            {"loss_lc_contrast", "loss_balance", "loss_lc"},
        ),
        ({"use_reconstruction": False}, {"loss_lc_contrast", "loss_balance", "loss_lc", "loss_fc"}),
    ],
)
def test_ablation_switches_drop_terms(overrides, expected):  # Table 3 rows (1), (2)
    method, data = _tiny_method(**overrides)
    model = method.build_model(seed=0)
    total, terms = method.contrastive_loss(model, data.views)
    assert set(terms) == expected
    summed = expected - {"loss_lc_contrast", "loss_balance"}  # both are inside loss_lc (Eq. 9)
    assert total.item() == pytest.approx(sum(terms[k].item() for k in summed), rel=1e-6)


def test_ablated_stages_are_idle():  # Table 3 rows (1)-(3): no L_r -> no pretraining, no L_p -> no fine-tuning
    method, data = _tiny_method(use_reconstruction=False, use_finetune=False)
    model = method.build_model(seed=0)
    opt = method.make_optimizer(model)
    start = flat_parameters(model)
    for round_ in (1, 2):
        assert _train(method, data, round_, model=model, opt=opt)[2] == {"stage": 0.0, "idle": 1.0}
    assert torch.equal(flat_parameters(model), start)
    losses = _train(method, data, 3, model=model, opt=opt)[2]
    assert "loss_r" not in losses and losses["stage"] == 1.0
    trained = flat_parameters(model)
    assert not torch.equal(trained, start)
    assert _train(method, data, 5, model=model, opt=opt)[2] == {"stage": 2.0, "idle": 1.0}
    assert torch.equal(flat_parameters(model), trained) and method.pseudo_targets is None


def test_ablated_stages_can_contrast_instead():  # the other reading of Sec. 5.1 (ablated_stages)
    method, data = _tiny_method(use_reconstruction=False, use_finetune=False, ablated_stages="contrastive")
    model = method.build_model(seed=0)
    opt = method.make_optimizer(model)
    for round_ in (1, 5):  # a pretraining and a fine-tuning round both run the remaining Eq. 10
        before = flat_parameters(model)
        losses = _train(method, data, round_, model=model, opt=opt)[2]
        assert losses["stage"] == 1.0 and "idle" not in losses and "loss_r" not in losses and "loss_fc" in losses
        assert not torch.equal(flat_parameters(model), before)
    assert method.pseudo_targets is None
    full, _ = _tiny_method(ablated_stages="contrastive")  # no ablation: the switch changes nothing
    assert _train(full, data, 1)[2]["stage"] == 0.0 and "loss_r" in _train(full, data, 1)[2]


def test_pseudo_labels_are_computed_once_and_match_each_view():
    method, data = _tiny_method()
    model, opt, out = _train(method, data, 5)
    first = {v: t.clone() for v, t in method.pseudo_targets.items()}
    assert set(first) == {0, 1} and all(t.shape == (20,) for t in first.values())
    _train(method, data, 6, model=model, opt=opt)
    assert all(torch.equal(first[v], method.pseudo_targets[v]) for v in first)  # Alg. 1 lines 6-7: once
    # each modality's targets are the same k-means partition under that modality's cluster ids
    fresh = method.compute_pseudo_targets(model, data, seed=0)
    pairs = set(zip(fresh[0].tolist(), fresh[1].tolist()))
    assert len(pairs) == len(set(fresh[0].tolist()))  # a one-to-one relabelling


def test_finetuning_updates_only_encoders_and_label_head():  # Alg. 1 line 9
    method, data = _tiny_method()
    model = method.build_model(seed=0)
    opt = method.make_optimizer(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.train_round(model, opt, data, torch.Generator().manual_seed(0), RoundContext(5, "train", 6))
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == name.startswith(("encoders", "label_head")), name


def test_pretraining_updates_only_the_autoencoders():  # Alg. 1 line 3
    method, data = _tiny_method()
    model = method.build_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    method.train_round(
        model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(1, "train", 6)
    )
    for name, p in model.named_parameters():
        assert (not torch.equal(before[name], p)) == name.startswith(("encoders", "decoders")), name


def test_one_modality_client_trains_reconstruction_and_balance_only():
    method, data = _tiny_method()
    single = LocalData(0, {1: data.views[1]}, data.labels, data.indices)
    model = method.build_model(seed=0)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    _, _, losses = _train(method, single, 3, model=model)
    assert losses["loss_fc"] == 0.0 and losses["loss_lc_contrast"] == 0.0 and losses["loss_balance"] < 0
    for name, p in model.named_parameters():
        trained = name.startswith(("encoders.1", "decoders.1", "label_head"))
        assert (not torch.equal(before[name], p)) == trained, name
    assert method.soft_assignments(model, single).shape == (20, 3)
    assert method.embed(model, single).shape == (20, 4)


def test_soft_assignments_are_eq15_and_embed_is_eq11_input():
    method, data = _tiny_method()
    model = method.build_model(seed=3)
    with torch.no_grad():
        z = model.encode(data.views)
        q = {v: torch.softmax(lg, 1).numpy() for v, lg in model.label_logits(z).items()}
        h = {v: hv.numpy() for v, hv in model.features(z).items()}
    p = method.soft_assignments(model, data)
    assert np.allclose(p, (q[0] + q[1]) / 2, atol=1e-6) and np.allclose(p.sum(1), 1, atol=1e-6)
    emb = method.embed(model, data)
    assert np.allclose(emb, np.concatenate([h[0], h[1]], axis=1), atol=1e-6)
    assert np.allclose(np.linalg.norm(emb[:, :4], axis=1), 1, atol=1e-5)  # h^m is L2-normalised
    mean_method, _ = _tiny_method(embed="mean")
    assert np.allclose(mean_method.embed(model, data), (h[0] + h[1]) / 2, atol=1e-6)


def test_selection_loss_is_eq10_over_fixed_batches():
    method, data = _tiny_method()
    model = method.build_model(seed=0)
    with torch.no_grad():
        batches = [{v: t[s : s + 8] for v, t in data.views.items()} for s in (0, 8, 16)]
        expected = np.mean([method.contrastive_loss(model, b)[0].item() for b in batches])
    assert method.selection_loss(model, data) == pytest.approx(expected, rel=1e-6)


def test_aggregate_is_modality_aware_fedavg():
    assert modality_of("encoders.1.0.weight") == 1 and modality_of("decoders.0.2.bias") == 0
    assert modality_of("feature_head.0.weight") is None and modality_of("label_head.2.bias") is None
    method, data = _tiny_method()
    models = [method.build_model(seed=s) for s in range(3)]
    peers = [
        PeerModel(0, 1, (0, 1), flat_parameters(models[0]), n_samples=10),
        PeerModel(1, 1, (0,), flat_parameters(models[1]), n_samples=30),
        PeerModel(2, 1, (1,), flat_parameters(models[2]), n_samples=20),
    ]
    flat, weights = method.aggregate(models[0], data, peers)
    out = method.build_model(seed=9)
    load_flat_parameters(out, flat)
    params = [dict(m.named_parameters()) for m in models]
    for name, p in out.named_parameters():
        if name.startswith("encoders.0") or name.startswith("decoders.0"):
            expected = (10 * params[0][name] + 30 * params[1][name]) / 40
        elif name.startswith("encoders.1") or name.startswith("decoders.1"):
            expected = (10 * params[0][name] + 20 * params[2][name]) / 30
        else:
            expected = (10 * params[0][name] + 30 * params[1][name] + 20 * params[2][name]) / 60
        assert torch.allclose(p, expected, atol=1e-6), name
    assert weights == pytest.approx({0: 1 / 6, 1: 1 / 2, 2: 1 / 3})
    # centralised: the only peer is the client itself, nothing changes
    alone, _ = method.aggregate(models[0], data, peers[:1])
    assert torch.equal(alone, flat_parameters(models[0]))


def test_paper_architecture_by_default():  # App. D
    method = CMMC(CMMCConfig(), view_dims=(1750, 79), n_clusters=5, num_clients=1)
    model = method.build_model(seed=0)
    widths = [m.out_features for m in model.encoders[0] if isinstance(m, torch.nn.Linear)]
    assert widths == [500, 500, 2000, 512]
    assert [m.out_features for m in model.decoders[1] if isinstance(m, torch.nn.Linear)] == [2000, 500, 500, 79]
    assert [m.out_features for m in model.feature_head if isinstance(m, torch.nn.Linear)] == [512, 128]
    assert [m.out_features for m in model.label_head if isinstance(m, torch.nn.Linear)] == [512, 5]
    cfg = method.cfg
    assert (cfg.tau_f, cfg.tau_l, cfg.lr, cfg.batch_size) == (0.5, 1.0, 3e-4, 256)
    assert (cfg.pretrain_epochs, cfg.contrastive_epochs, cfg.finetune_epochs) == (200, 10, 30)


# ---------------------------------------------------------------------------------------------
# Configs and grids


def test_configs_build_and_match_the_stages():
    from fedsim.config import load_config

    paths = sorted((ROOT / "configs" / "cmmc").glob("*.yaml"))
    names = {p.stem for p in paths}
    assert {
        "bdgp",
        "mnist_usps",
        "hdigit",
        "scene15",
        "cub",
        "reuters",
        "handwritten",
        "ccv",
        "caltech5v",
        "multi_fashion",
        "bdgp_federated",
    } <= names
    contrastive = {"bdgp": 10, "mnist_usps": 50, "ccv": 50, "caltech5v": 50, "multi_fashion": 100}
    for path in paths:
        cfg = load_config(path)
        params = CMMCConfig(**cfg.method_params)
        assert cfg.method == "cmmc" and cfg.rounds == params.total_epochs, path.name
        assert cfg.pretrain_rounds == 0, path.name  # CMMC's stage 1 is its own pretraining
        if path.stem in contrastive:
            assert params.contrastive_epochs == contrastive[path.stem], path.name
    fed = load_config(ROOT / "configs" / "cmmc" / "bdgp_federated.yaml")
    assert (fed.num_clients, fed.client_ratio, fed.mode) == (12, "1:1", "virtual")


def test_grids_reproduce_the_paper():
    from fedsim.sweeps.grid import load_grid
    from fedsim.sweeps.tune_runner import plan_sweep

    from fedsim.config import build_config, load_yaml

    table3 = load_grid("cmmc", "table3")
    plan = plan_sweep("cmmc", "synthetic-bdgp", "table3", [], trial_cpus=2)
    base = load_yaml(ROOT / "configs" / "cmmc" / "bdgp.yaml")
    rows = {}
    for trial in table3.trials:
        # a fresh copy per trial: build_config writes overrides into the nested sections of the
        # mapping it is given (so plan.base carries every earlier trial's method overrides)
        cfg = build_config(copy.deepcopy(base), plan.overrides + table3.trial_overrides(trial))
        rows[trial["ablation"]] = CMMCConfig(**cfg.method_params)
        assert cfg.rounds == rows[trial["ablation"]].total_epochs
    assert not rows["lc"].use_feature_contrastive and not rows["lc"].use_reconstruction
    assert rows["lc_fc"].use_feature_contrastive and not rows["lc_fc"].use_reconstruction
    assert rows["lc_fc_r"].use_reconstruction and not rows["lc_fc_r"].use_finetune
    assert not rows["lc"].use_finetune and not rows["lc_fc"].use_finetune
    assert rows["full"] == CMMCConfig()
    assert table3.paper["bdgp"]["full"]["acc"] == 98.9
    table1 = load_grid("cmmc", "table1")
    assert table1.grid["seed"] == [0, 1, 2] and table1.paper["bdgp"]["all"]["nmi"] == 96.6
    for grid in ("table1", "fig3c"):  # every trial's config builds (as tests/test_sweep.py checks)
        assert plan_sweep("cmmc", "synthetic-bdgp", grid, [], trial_cpus=2).actors_per_trial == 1
    longer = load_grid("cmmc", "table3_contrastive")
    assert (
        longer.fixed == {"cmmc.ablated_stages": "contrastive"}
        and longer.paper["bdgp"]["lc"] == table3.paper["bdgp"]["lc"]
    )
    assert longer.variants["ablation"] == {k: v for k, v in table3.variants["ablation"].items() if k != "full"}
    fig3c = load_grid("cmmc", "fig3c")
    assert (
        {"cmmc.tau_f", "cmmc.tau_l"} <= set(fig3c.grid)
        and 0.5 in fig3c.grid["cmmc.tau_f"]
        and 1.0 in fig3c.grid["cmmc.tau_l"]
    )


# ---------------------------------------------------------------------------------------------
# Through the runtime (tiny synthetic data)

# lr 10x the paper's: the tiny runs have a few dozen steps per stage, and the label contrast of
# Eq. 8 starts at its symmetric point (uniform soft labels) and needs steps to leave it.
TINY_CMMC = {
    "encoder_hidden": [32],
    "latent_dim": 16,
    "head_hidden": 16,
    "feature_dim": 8,
    "batch_size": 32,
    "lr": 3e-3,
    "pretrain_epochs": 3,
    "contrastive_epochs": 12,
    "finetune_epochs": 5,
    "kmeans_n_init": 3,
}
TINY_STAGES = [0] * 3 + [1] * 12 + [2] * 5


def _config(**changes):
    """SMALL_SYNTHETIC's data (3 views, 3 clusters, 240 samples, well separated) with a tiny CMMC:
    no runtime pretraining (stage 1 is CMMC's own), Eq. 15 evaluation."""
    from fedsim.config import build_config
    from tests.conftest import SMALL_SYNTHETIC

    raw = {k: v for k, v in SMALL_SYNTHETIC.items() if k != "afmcc"}
    raw["synthetic"] = {**SMALL_SYNTHETIC["synthetic"], "separation": 4.0}  # clusters k-means finds (ACC ~1)
    raw.update(
        {
            "method": "cmmc",
            "cmmc": dict(TINY_CMMC),
            "pretrain": {"enabled": False},
            "rounds": 20,
            "evaluation": "argmax",
            "eval_every": 0,
        }
    )
    raw.update(changes)
    return build_config(raw)


def _stages(upload_log, client):
    rows = upload_log[(upload_log["phase"] == "train") & (upload_log["client_id"] == client)].sort_values("round")
    return [int(i["losses"]["stage"]) for i in rows["info"]], list(rows["info"])


def test_centralised_run_through_the_runtime(ray_session):
    from fedsim.runner import run_experiment

    cfg = _config(num_clients=1, client_ratio="1:0", mode="sync")
    outcome = run_experiment(cfg)
    out, res = outcome.summary, outcome.federation
    assert res.rounds_done == [20]
    stages, infos = _stages(res.upload_log, 0)
    assert stages == TINY_STAGES
    assert infos[0]["losses"]["loss_r"] > infos[2]["losses"]["loss_r"]  # stage 1 learns
    print("centralised", {k: out[k] for k in ("acc", "nmi", "purity")})
    assert out["acc"] > 0.9, out  # separated clusters; a collapsed cluster head scores exactly 1/3
    assert {"nmi", "ari", "purity"} <= set(out)


def test_federated_run_with_single_modality_clients(ray_session):
    from fedsim.runner import run_experiment

    # ~60 samples per client: batch 16 gives them 4 steps an epoch
    cfg = _config(num_clients=4, client_ratio="1:1", mode="virtual", cmmc={**TINY_CMMC, "batch_size": 16})
    outcome = run_experiment(cfg)
    out, res = outcome.summary, outcome.federation
    assert res.rounds_done == [20] * 4
    kinds = out["federation"]["client_kinds"]
    assert kinds == "FFSS"
    for client in range(4):
        stages, infos = _stages(res.upload_log, client)
        assert stages == TINY_STAGES
        contrast = infos[3]["losses"]["loss_fc"]
        assert (contrast > 0) if kinds[client] == "F" else (contrast == 0.0)  # one view: no L_fc
    print("federated", {k: out[k] for k in ("acc", "nmi", "purity")})
    assert out["acc"] > 0.4, out  # a collapsed cluster head scores exactly 1/3
