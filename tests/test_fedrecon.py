"""FedRecon (../shared/papers/002_a151183d84f2fadb.txt): the VAE loss (Eq. 3), the mapping loss
(Eq. 5) and the KL terms against hand computations; the three stages of Alg. 1 each touching
only their own parameters (VAEs really frozen in stage 2); the fusion entries with the frozen
global generator (Sec. 4.3, Eq. 6); averaging and the frozen copies; generation quality; and a
run through the runtime with missing modalities."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import erf

from fedsim.methods.base import LocalData, PeerModel, RoundContext, flat_parameters, load_flat_parameters
from fedsim.methods.blocks import kl_to_standard_normal_logvar
from fedsim.methods.fedrecon import (
    FedRecon,
    FedReconConfig,
    ModalityVAE,
    gaussian_kl,
    generate,
    mapping_loss,
    mapping_network,
    negative_log_likelihood,
    vae_loss,
)

# --------------------------------------------------------------------------------------------
# numpy re-implementations of the layers, for the hand computations


def _lin(layer: torch.nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ layer.weight.detach().double().numpy().T + layer.bias.detach().double().numpy()


def _relu(x):
    return np.maximum(x, 0.0)


def _np_encode(vae: ModalityVAE, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    h = _relu(_lin(vae.body[0][0], x))  # body = Sequential(mlp([d, hidden]), ReLU)
    return _lin(vae.mu, h), _lin(vae.logvar, h)


def _np_decode(vae: ModalityVAE, z: np.ndarray) -> np.ndarray:
    return _lin(vae.decoder[2], _relu(_lin(vae.decoder[0], z)))  # Linear, ReLU, Linear


def _np_mapping(net: torch.nn.Sequential, z: np.ndarray) -> np.ndarray:
    h = _lin(net[0], z)  # Linear, LayerNorm, GELU, Linear
    ln = net[1]
    h = (h - h.mean(1, keepdims=True)) / np.sqrt(h.var(1, keepdims=True) + ln.eps)
    h = h * ln.weight.detach().double().numpy() + ln.bias.detach().double().numpy()
    h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
    return _lin(net[3], h)


def _kl_std(mu, logvar):
    return np.mean(-0.5 * (1 + logvar - mu**2 - np.exp(logvar)).sum(1))


def _kl(mu_p, lv_p, mu_q, lv_q):
    return np.mean(0.5 * (lv_q - lv_p + (np.exp(lv_p) + (mu_p - mu_q) ** 2) / np.exp(lv_q) - 1).sum(1))


# --------------------------------------------------------------------------------------------
# Loss terms


def test_kl_terms_by_hand():
    mu = np.array([[0.5, -1.0], [0.0, 2.0]])
    lv = np.array([[0.1, -0.3], [0.0, 0.5]])
    assert kl_to_standard_normal_logvar(torch.tensor(mu), torch.tensor(lv)).item() == pytest.approx(_kl_std(mu, lv))
    mu_q = np.array([[1.0, 0.0], [-0.5, 1.0]])
    lv_q = np.array([[0.2, 0.2], [-1.0, 0.0]])
    assert gaussian_kl(*(torch.tensor(a) for a in (mu, lv, mu_q, lv_q))).item() == pytest.approx(
        _kl(mu, lv, mu_q, lv_q)
    )
    # KL(p || N(0, I)) is the special case mu_q = 0, logvar_q = 0
    zeros = torch.zeros(2, 2, dtype=torch.float64)
    assert gaussian_kl(torch.tensor(mu), torch.tensor(lv), zeros, zeros).item() == pytest.approx(_kl_std(mu, lv))


def test_negative_log_likelihood_by_hand():
    x = np.array([[1.0, 0.0, 0.5], [0.2, 1.0, 0.0]])
    out = np.array([[0.3, -1.0, 2.0], [0.0, 0.5, -0.5]])
    gauss = np.mean([0.5 * ((x[i] - out[i]) ** 2).sum() for i in range(2)])
    assert negative_log_likelihood(torch.tensor(x), torch.tensor(out), "gaussian").item() == pytest.approx(gauss)
    s = 1 / (1 + np.exp(-out))
    bern = np.mean(-(x * np.log(s) + (1 - x) * np.log(1 - s)).sum(1))
    assert negative_log_likelihood(torch.tensor(x), torch.tensor(out), "bernoulli").item() == pytest.approx(bern)


@pytest.mark.parametrize("likelihood", ["gaussian", "bernoulli"])
def test_vae_loss_by_hand(likelihood):  # Eq. 3
    torch.manual_seed(0)
    vae = ModalityVAE(3, [4], 2).double()
    x = np.array([[0.1, 0.9, 0.4], [1.0, 0.0, 0.3], [0.5, 0.5, 0.5]])
    got = vae_loss(vae, torch.tensor(x), likelihood, torch.Generator().manual_seed(11))
    eps = torch.randn((3, 2), generator=torch.Generator().manual_seed(11), dtype=torch.float64).numpy()
    mu, lv = _np_encode(vae, x)
    z = mu + np.exp(0.5 * lv) * eps
    out = _np_decode(vae, z)
    if likelihood == "gaussian":
        recon = np.mean(0.5 * ((x - out) ** 2).sum(1))
    else:
        s = 1 / (1 + np.exp(-out))
        recon = np.mean(-(x * np.log(s) + (1 - x) * np.log(1 - s)).sum(1))
    kl = _kl_std(mu, lv)
    assert got["recon"].item() == pytest.approx(recon, rel=1e-9)
    assert got["kl"].item() == pytest.approx(kl, rel=1e-9)
    assert got["loss"].item() == pytest.approx(recon + kl, rel=1e-9)


@pytest.mark.parametrize("alpha,mode", [(0, "mean"), (1, "mean"), (1, "sample")])
def test_mapping_loss_by_hand(alpha, mode):  # Eq. 5 (with Eq. 4's cross term as L_recon)
    torch.manual_seed(1)
    source, target = ModalityVAE(3, [4], 2).double(), ModalityVAE(5, [4], 2).double()
    net = mapping_network(2, [6]).double()
    x_m = np.array([[0.1, 0.9, 0.4], [1.0, 0.0, 0.3]])
    x_n = np.array([[0.2, 0.1, 0.0, 1.0, 0.5], [0.7, 0.3, 0.9, 0.0, 0.1]])
    got = mapping_loss(
        source,
        target,
        net,
        torch.tensor(x_m),
        torch.tensor(x_n),
        "gaussian",
        alpha,
        mode,
        torch.Generator().manual_seed(3),
    )
    mu_m, lv_m = _np_encode(source, x_m)
    if mode == "sample":
        eps = torch.randn((2, 2), generator=torch.Generator().manual_seed(3), dtype=torch.float64).numpy()
        z_m = mu_m + np.exp(0.5 * lv_m) * eps
    else:
        z_m = mu_m
    mapped = _np_mapping(net, z_m)
    recon = np.mean(0.5 * ((x_n - _np_decode(target, mapped)) ** 2).sum(1))
    mu_n, lv_n = _np_encode(target, x_n)
    expected = recon + alpha * _kl(mapped, lv_m, mu_n, lv_n)
    assert got["recon"].item() == pytest.approx(recon, rel=1e-9)
    assert got["loss"].item() == pytest.approx(expected, rel=1e-9)
    assert ("kl" in got) == bool(alpha)


def test_generate_decodes_the_mapped_posterior_mean():
    method, data = _tiny()
    model = method.build_model(seed=0)
    gen = model.generator
    x1 = data.views[1]
    with torch.no_grad():
        mu, _ = gen.vaes[1].encode(x1)
        mapped = torch.sigmoid(gen.vaes[0].decode(gen.mapping(0, 1)(mu)))
        direct = torch.sigmoid(gen.vaes[0].decode(mu))
    assert torch.allclose(generate(gen, 0, {1: x1}, "bernoulli", True), mapped)
    assert torch.allclose(generate(gen, 0, {1: x1}, "bernoulli", False), direct)


# --------------------------------------------------------------------------------------------
# The method


def _tiny(modalities=(0, 1), n=24, **overrides) -> tuple[FedRecon, LocalData]:
    cfg = FedReconConfig(
        **{
            "hidden": [8],
            "feature_dim": 4,
            "attention_dim": 3,
            "head_hidden": 6,
            "batch_size": 8,
            "latent_dim": 2,
            "vae_hidden": [6],
            "mapping_hidden": [5, 5],
            "likelihood": "bernoulli",
            **overrides,
        }
    )
    method = FedRecon(cfg, (5, 3), 3, 4)
    g = torch.Generator().manual_seed(0)
    labels = np.arange(n) % 3
    views = {
        m: torch.rand(n, (5, 3)[m], generator=g) * 0.5 + torch.tensor(labels, dtype=torch.float32)[:, None] / 4
        for m in modalities
    }
    test = LocalData(0, {m: v[:6] for m, v in views.items()}, labels[:6], np.arange(6))
    return method, LocalData(0, views, labels, np.arange(n), test=test)


def _params(module: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(module.parameters()).detach().clone()


def test_stage_2_trains_only_the_mappings_with_the_vaes_frozen():  # Alg. 1 lines 6-8
    method, data = _tiny(mapping_epochs=2, kl_alpha=1)
    model = method.build_model(seed=0)
    opt = method.make_optimizer(model)
    vaes, maps, task, frozen = (
        _params(m) for m in (model.generator.vaes, model.generator.mappings, model.task, model.frozen)
    )
    seen_grad = []
    original_step = opt.step

    def spying_step(*args, **kwargs):  # during stage 2 no VAE parameter may require or get a gradient
        seen_grad.append(any(p.requires_grad or p.grad is not None for p in model.generator.vaes.parameters()))
        return original_step(*args, **kwargs)

    opt.step = spying_step
    losses = method._stage_mapping(model, opt, data, torch.Generator().manual_seed(0))
    assert seen_grad and not any(seen_grad)
    assert torch.equal(_params(model.generator.vaes), vaes)
    assert torch.equal(_params(model.task), task) and torch.equal(_params(model.frozen), frozen)
    assert not torch.equal(_params(model.generator.mappings), maps)
    assert losses["loss_map"] > 0 and "loss_map_kl" in losses
    assert all(p.requires_grad for p in model.generator.vaes.parameters())  # unfrozen for stage 1 again


def test_stage_1_trains_the_held_vaes_only_and_stage_3_the_task_model_only():
    method, data = _tiny(modalities=(1,))
    model = method.build_model(seed=0)
    opt = method.make_optimizer(model)
    before = {
        k: _params(m)
        for k, m in (
            ("vae0", model.generator.vaes[0]),
            ("vae1", model.generator.vaes[1]),
            ("maps", model.generator.mappings),
            ("task", model.task),
        )
    }
    losses = method._stage_vae(model, opt, data, torch.Generator().manual_seed(0))
    assert set(losses) == {"loss_vae", "loss_vae_recon", "loss_vae_kl"}
    assert torch.equal(_params(model.generator.vaes[0]), before["vae0"])  # modality 0 is missing here
    assert not torch.equal(_params(model.generator.vaes[1]), before["vae1"])
    assert torch.equal(_params(model.task), before["task"])
    # a one-modality client has no pair to train a mapping on
    assert method._stage_mapping(model, opt, data, torch.Generator().manual_seed(0)) == {}
    generator_now = _params(model.generator)
    losses = method._stage_task(model, opt, data, torch.Generator().manual_seed(0))
    assert losses["loss_task"] > 0
    assert torch.equal(_params(model.generator), generator_now)  # stage 3 leaves the generators alone
    assert not torch.equal(_params(model.task), before["task"])


@pytest.mark.parametrize("ggfs", [True, False])
def test_entries_reconstruct_missing_modalities_from_both_generators(ggfs):  # Sec. 4.3, Eq. 6
    method, data = _tiny(modalities=(1,), use_global_generator=ggfs)
    model = method.build_model(seed=0)
    with torch.no_grad():  # make the frozen copy differ from the local generator
        for p in model.frozen.parameters():
            p.add_(0.1)
        h, offset = method.entries(model, data.views)
        real = model.task.encode(1, data.views[1])
        local = model.task.encode(0, generate(model.generator, 0, {1: data.views[1]}, "bernoulli", True))
        frozen = model.task.encode(0, generate(model.frozen, 0, {1: data.views[1]}, "bernoulli", True))
    if ggfs:  # modality order: the two reconstructions of modality 0, then the real modality 1
        assert h.shape == (24, 3, 4)
        assert torch.allclose(h[:, 0], local) and torch.allclose(h[:, 1], frozen) and torch.allclose(h[:, 2], real)
        assert offset.tolist() == pytest.approx([math.log(0.5), math.log(0.5), 0.0])
    else:
        assert h.shape == (24, 2, 4) and torch.allclose(h[:, 0], local) and torch.allclose(h[:, 1], real)
        assert offset.tolist() == pytest.approx([0.0, 0.0])
    full_method, full = _tiny()
    h, offset = full_method.entries(model, full.views)
    assert h.shape == (24, 2, 4) and offset.tolist() == [0.0, 0.0]  # a complete client has no synthetic entries


def test_aggregate_averages_by_owners_and_refreshes_the_frozen_copy():  # Alg. 1 lines 3-4, 13-16
    method, data = _tiny()
    model = method.build_model(seed=0)
    size = flat_parameters(model).numel()
    peers = [
        PeerModel(0, 1, (0, 1), torch.full((size,), 1.0), 5),
        PeerModel(1, 1, (0,), torch.full((size,), 2.0), 50),
        PeerModel(2, 1, (1,), torch.full((size,), 4.0), 500),
    ]
    flat, weights = method.aggregate(model, data, peers)
    load_flat_parameters(model, flat)
    assert weights == pytest.approx({0: 1 / 3, 1: 1 / 3, 2: 1 / 3})  # Alg. 1: 1/K
    assert torch.allclose(_params(model.task), torch.tensor(7 / 3))  # phi over all clients
    assert torch.all(_params(model.generator.vaes[0]) == 1.5)  # G_0 over the holders of 0
    assert torch.all(_params(model.generator.vaes[1]) == 2.5)
    assert torch.all(_params(model.generator.mappings) == 1.0)  # T_{n,m}: only client 0 holds both
    assert torch.equal(_params(model.frozen), _params(model.generator))  # G~ := G^(t-1)
    assert all(not p.requires_grad for p in model.frozen.parameters())


def test_train_round_is_seeded_and_reports_every_stage():
    method, data = _tiny(kl_alpha=1)
    runs = []
    for _ in range(2):
        model = method.build_model(seed=3)
        losses = method.train_round(
            model, method.make_optimizer(model), data, torch.Generator().manual_seed(1), RoundContext(1)
        )
        runs.append(flat_parameters(model))
    assert torch.equal(runs[0], runs[1])
    assert {"loss", "loss_task", "loss_vae", "loss_vae_recon", "loss_vae_kl", "loss_map", "loss_map_kl"} <= set(losses)
    assert all(np.isfinite(v) for v in losses.values())
    ablated, _ = _tiny(use_mapping=False)
    model = ablated.build_model(seed=3)
    maps = _params(model.generator.mappings)
    losses = ablated.train_round(
        model, ablated.make_optimizer(model), data, torch.Generator().manual_seed(1), RoundContext(1)
    )
    assert "loss_map" not in losses and torch.equal(_params(model.generator.mappings), maps)


def test_predict_and_extra_metrics():
    method, data = _tiny()
    model = method.build_model(seed=0)
    for _ in range(3):
        method.train_round(model, method.make_optimizer(model), data, torch.Generator().manual_seed(0), RoundContext(1))
    p = method.predict(model, data.test)
    assert p.shape == (6, 3) and np.allclose(p.sum(1), 1.0, atol=1e-6)
    extra = method.extra_metrics(model, data)
    keys = {f"coherence_{a}_{b}" for a in ("map", "direct") for b in ("local", "frozen", "both")}
    assert keys | {
        "coherence",
        "coherence_real",
        "recon_mse",
        "cross_mse",
        "coherence_0from1",
        "coherence_1from0",
    } == set(extra)
    assert extra["coherence"] == extra["coherence_map_both"]
    assert all(0.0 <= extra[k] <= 1.0 for k in keys | {"coherence", "coherence_real"})
    # coherence by hand for one pair: the classifier trained on real modality 0, applied to the
    # mean of the local and frozen generations of modality 0 from the test modality 1
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=300).fit(data.views[0].numpy(), data.labels)
    x_hat = (
        generate(model.generator, 0, {1: data.test.views[1]}, "bernoulli", True)
        + generate(model.frozen, 0, {1: data.test.views[1]}, "bernoulli", True)
    ) / 2
    assert extra["coherence_0from1"] == pytest.approx(float((clf.predict(x_hat.numpy()) == data.test.labels).mean()))
    # a one-modality client reports only the reconstruction error
    one, single = _tiny(modalities=(1,))
    assert set(one.extra_metrics(one.build_model(0), single)) == {"recon_mse"}


def test_fedrecon_runs_through_the_runtime_with_missing_modalities(ray_session):
    from fedsim.config import build_config
    from fedsim.runner import run_experiment

    raw = {
        "method": "fedrecon",
        "task": "classification",
        "dataset": "synthetic",
        "synthetic": {"view_dims": [12, 16], "n_clusters": 3, "n_samples": 240, "noise": 0.2},
        "num_clients": 4,
        "client_ratio": "1:0",
        "partition": "dirichlet",
        "dirichlet_alpha": 5.0,
        "missing_rate": 0.3,
        "mode": "sync",
        "rounds": 3,
        "eval_every": 0,
        "seed": 2,
        "pretrain": {"enabled": False},
        "tracking": {"enabled": False, "progress": False},
        "fedrecon": {
            "lr": 0.01,
            "hidden": [16],
            "feature_dim": 8,
            "attention_dim": 8,
            "head_hidden": 8,
            "latent_dim": 4,
            "vae_hidden": [16],
            "mapping_hidden": [16, 16],
        },
    }
    cfg = build_config(raw)
    out = run_experiment(cfg).summary
    modalities = out["federation"]["client_modalities"]
    assert any(len(m) == 1 for m in modalities) and any(len(m) == 2 for m in modalities)
    assert all(0.0 <= out[k] <= 1.0 for k in ("accuracy", "macro_f1", "uar"))
    assert out["accuracy"] > 1 / 3
    assert 0.0 <= out["coherence"] <= 1.0 and out["recon_mse"] >= 0.0
