"""One conformance test for every registered method (the ``fedsim.methods`` entry points).

Each method is driven the way a client actor drives it (``fedsim.runtime.client``), in this
process, on a small seeded three-cluster problem with two views: built from its own defaults,
trained a few rounds, aggregated, restarted from the state a client keeps with its upload, and
evaluated. Nothing here names a method: a new entry point is tested by being registered. A
method whose defaults make a round slow keeps a smaller section for these checks in
tests/conformance/<name>.yaml.
"""

from __future__ import annotations

import fnmatch
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch

from fedsim.config import build_config, load_yaml
from fedsim.errors import ConfigError
from fedsim.methods import get_method, method_names
from fedsim.methods.base import Learner, LocalData, PeerModel, RoundContext, flat_parameters, load_flat_parameters
from fedsim.runtime import client_state

VIEW_DIMS = (10, 6)
N_CLUSTERS = 3
N_SAMPLES = 240  # per client: two of the IB methods' 100-sample batches (drop_last)
METHODS = method_names()
SECTIONS = Path(__file__).parent / "conformance"


def _views(rng: np.random.Generator, n: int) -> tuple[dict[int, torch.Tensor], np.ndarray]:
    labels = np.arange(n) % N_CLUSTERS
    views = {}
    for v, d in enumerate(VIEW_DIMS):
        centres = rng.uniform(0.0, 1.0, size=(N_CLUSTERS, d))
        x = centres[labels] + 0.05 * rng.standard_normal((n, d))
        views[v] = torch.from_numpy(np.clip(x, 0.0, 1.0).astype(np.float32))
    return views, labels


def _data(client_id: int) -> LocalData:
    """A client with both views, and a held-out split (the classification task reads it)."""
    rng = np.random.default_rng(client_id)
    views, labels = _views(rng, N_SAMPLES)
    test_views, test_labels = _views(np.random.default_rng(100 + client_id), 60)
    data = LocalData(client_id, views, labels, np.arange(N_SAMPLES))
    data.test = LocalData(client_id, test_views, test_labels, np.arange(60))
    return data


def _experiment(name: str, *overrides: str):
    task = "classification" if get_method(name).supervised else "clustering"
    small = SECTIONS / f"{name}.yaml"
    raw = load_yaml(small) if small.is_file() else {}
    return build_config({**raw, "method": name, "task": task}, list(overrides))


def _method(name: str) -> Learner:
    cls = get_method(name)
    return cls(cls.Config(**_experiment(name).method_params), VIEW_DIMS, N_CLUSTERS, 2)


def _round(method: Learner, model, optimizer, data: LocalData, round_: int) -> dict[str, float]:
    generator = torch.Generator().manual_seed(1000 + round_)
    return method.train_round(model, optimizer, data, generator, RoundContext(round_, "train", 100))


def _client(name: str, seed: int = 0):
    method = _method(name)
    model = method.build_model(seed=seed)
    return method, model, method.make_optimizer(model)


@pytest.mark.parametrize("name", METHODS)
def test_is_a_learner_with_every_declaration(name: str) -> None:
    cls = get_method(name)
    assert issubclass(cls, Learner) and not inspect.isabstract(cls)
    assert cls.name == name
    if cls.supervised:  # the classification task calls predict
        assert cls.predict is not Learner.predict
    else:  # clustering: the config the method resolves to says how it is evaluated
        assert _experiment(name).evaluation is not None


@pytest.mark.parametrize("name", METHODS)
def test_seeded(name: str) -> None:
    """The same seed gives the same model and the same round, bit for bit; another seed differs."""
    data = _data(0)
    runs = []
    for _ in range(2):
        method, model, optimizer = _client(name, seed=3)
        losses = [_round(method, model, optimizer, data, r) for r in (1, 2)]
        runs.append((flat_parameters(model), losses))
    assert torch.equal(runs[0][0], runs[1][0])
    assert runs[0][1] == runs[1][1]
    _, other, _ = _client(name, seed=4)
    assert not torch.equal(flat_parameters(_client(name, seed=3)[1]), flat_parameters(other))


@pytest.mark.parametrize("name", METHODS)
def test_loss_goes_down(name: str) -> None:
    data = _data(0)
    method, model, optimizer = _client(name)
    losses = [_round(method, model, optimizer, data, r)["loss"] for r in range(1, 9)]
    assert all(np.isfinite(losses)), losses
    assert min(losses[-3:]) < losses[0], losses


@pytest.mark.parametrize("name", METHODS)
def test_survives_restart(name: str) -> None:
    """A client rebuilt from its upload and the state kept with it (what a restarted actor does)
    trains its next round exactly as the client that was never interrupted."""
    data = _data(0)
    method, model, optimizer = _client(name)
    for r in (1, 2):
        _round(method, model, optimizer, data, r)
    state = client_state.capture(2, model, optimizer, method)
    upload = flat_parameters(model).clone()

    fresh, fresh_model, fresh_optimizer = _client(name)
    load_flat_parameters(fresh_model, upload)
    client_state.restore(state, fresh_model, fresh_optimizer, fresh, torch.device("cpu"))

    assert _round(method, model, optimizer, data, 3) == _round(fresh, fresh_model, fresh_optimizer, data, 3)
    assert torch.equal(flat_parameters(model), flat_parameters(fresh_model))


@pytest.mark.parametrize("name", METHODS)
def test_aggregates_and_evaluates(name: str) -> None:
    """Aggregation gives a model of the same shape; evaluation gives finite features, soft
    assignments or class probabilities, and exactly the metrics the method declares."""
    cls = get_method(name)
    clients = [(_data(c), *_client(name, seed=c)) for c in (0, 1)]
    for data, method, model, optimizer in clients:
        _round(method, model, optimizer, data, 1)
    peers = [
        PeerModel(data.client_id, 1, data.modalities, flat_parameters(model), data.n_samples)
        for data, _, model, _ in clients
    ]
    data, method, model, _ = clients[0]
    aggregated, weights = method.aggregate(model, data, peers)
    assert aggregated.shape == flat_parameters(model).shape and torch.isfinite(aggregated).all()
    assert set(weights) <= {0, 1}
    load_flat_parameters(model, aggregated)

    features = method.embed(model, data)
    assert features.shape[0] == data.n_samples and np.isfinite(features).all()
    if cls.supervised:
        p = method.predict(model, data.test)
        assert p.shape == (data.test.n_samples, N_CLUSTERS) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4)
    elif _experiment(name).evaluation == "argmax":
        p = method.soft_assignments(model, data)
        assert p is not None and p.shape == (data.n_samples, N_CLUSTERS)
    selection = method.selection_loss(model, data)
    assert (selection is not None) == ("selection_loss" in cls.metric_names)
    for key in method.extra_metrics(model, data):
        assert any(fnmatch.fnmatchcase(key, p) for p in cls.metric_names), (key, cls.metric_names)


@pytest.mark.parametrize("name", METHODS)
def test_bad_config_refused_early(name: str) -> None:
    """Before Ray starts: a misspelt method key, and a task the method cannot do."""
    with pytest.raises(ConfigError, match=f"unknown config key '{name}.no_such_key'"):
        _experiment(name, f"{name}.no_such_key=1")
    cls = get_method(name)
    wrong = build_config({"method": name, "task": "clustering" if cls.supervised else "classification"})
    with pytest.raises(ConfigError, match="supervised"):
        cls.validate(wrong)
    cls.validate(_experiment(name))
