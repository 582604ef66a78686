"""Server-side aggregation (``ServerAverage``): the parameter server averages each snapshot once
and every client downloads two models (its own upload and the average), not one per client."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedsim.config import build_config
from fedsim.methods import get_method
from fedsim.methods.base import LocalData, PeerModel, ServerAverage, flat_parameters
from fedsim.runtime.server import ParameterServer, Snapshot, StoreEntry

pytestmark = pytest.mark.timeout(300)


class TwoViewModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc0 = torch.nn.Linear(3, 2)
        self.enc1 = torch.nn.Linear(4, 2)
        self.head = torch.nn.Linear(2, 2)
        self.private = torch.nn.Linear(2, 1)


def _owners(name: str) -> tuple[int, ...] | None:
    if name.startswith("enc"):
        return (int(name[3]),)
    return None if name.startswith("private") else ()


def test_average_counts_only_the_owners_and_keeps_the_clients_own_values() -> None:
    torch.manual_seed(0)
    model = TwoViewModel()
    average = ServerAverage.of(model, _owners, "samples")
    size = flat_parameters(model).numel()
    params = [torch.randn(size) for _ in range(3)]
    peers = [
        PeerModel(0, 1, (0, 1), params[0], n_samples=10),
        PeerModel(1, 1, (0,), params[1], n_samples=30),
        PeerModel(2, 1, (1,), params[2], n_samples=20),
    ]
    values, taken, weights = average.average(peers)
    own = torch.randn(size)
    out = average.merge(own, values, taken)
    segments = {name: (s, e) for name, (s, e, _) in zip(dict(model.named_parameters()), average.segments)}
    for name, (s, e) in segments.items():
        if name.startswith("enc0"):  # clients 0 and 1 hold view 0
            expected = (10 * params[0][s:e] + 30 * params[1][s:e]) / 40
        elif name.startswith("enc1"):  # clients 0 and 2 hold view 1
            expected = (10 * params[0][s:e] + 20 * params[2][s:e]) / 30
        elif name.startswith("head"):  # everyone
            expected = (10 * params[0][s:e] + 30 * params[1][s:e] + 20 * params[2][s:e]) / 60
        else:  # never averaged: the client's own
            expected = own[s:e]
        assert torch.allclose(out[s:e], expected, atol=1e-6), name
    assert weights == pytest.approx({0: 1 / 6, 1: 3 / 6, 2: 2 / 6})


def test_the_servers_average_is_the_clients_aggregate_bit_for_bit(ray_session) -> None:
    """What the parameter server computes from a snapshot equals, bit for bit, what the method's
    ``aggregate`` computes on a client from every peer's upload (the peer path it replaces)."""
    import ray

    cfg = build_config({"method": "msdib", "dataset": "synthetic"})
    cls = get_method("msdib")
    method = cls(cls.Config(**cfg.method_params), (5, 7), 3, 3)
    models = [method.build_model(seed=s) for s in range(3)]
    flats = [flat_parameters(m).numpy() for m in models]
    modalities = [(0, 1), (0,), (1,)]
    entries = tuple(StoreEntry(c, 1, modalities[c], ray.put(flats[c]), n_samples=10 * (c + 1)) for c in range(3))
    server = ParameterServer([list(m) for m in modalities], server_average=method.server_average(models[0]))
    values, taken, weights = server.average(Snapshot(entries, commits=3))
    peers = [PeerModel(c, 1, modalities[c], torch.from_numpy(flats[c]), 10 * (c + 1)) for c in range(3)]
    data = LocalData(1, {0: torch.zeros(4, 5)}, np.zeros(4, dtype=int), np.arange(4))
    expected, expected_weights = method.aggregate(models[1], data, peers)
    merged = method.server_average(models[1]).merge(flat_parameters(models[1]), torch.from_numpy(values), taken)
    assert torch.equal(merged, expected)
    assert weights == expected_weights


@pytest.mark.parametrize(("method", "downloads"), [("msdib", 2), ("afmcc", 4)])
def test_a_round_downloads_two_models_when_the_server_averages(ray_session, small_config, method, downloads) -> None:
    from fedsim.runner import run_experiment

    overrides = ["rounds=2", "eval_every=0", f"method={method}", "client_ratio=1:1"]
    if method == "msdib":
        overrides += ["msdib.batch_size=20"]
    outcome = run_experiment(small_config(*overrides))
    log = outcome.federation.upload_log
    train = log[log["phase"] == "train"]
    assert len(train) == 4 * 2
    assert {info["downloaded_models"] for info in train["info"]} == {downloads}


def test_fedopt_steps_once_per_snapshot_on_the_server_and_survives_a_restart(ray_session, tmp_path) -> None:
    """FedOpt's server optimiser lives on the parameter server: a snapshot asked for twice (a
    round re-run) gets the same model, a new one one more FedAdam step; a server restarted from
    its checkpoint continues with the same state."""
    import ray

    from fedsim.methods.supervised import fedadam_step

    cfg = build_config({"method": "fedopt", "dataset": "synthetic", "task": "classification"})
    cls = get_method("fedopt")
    method = cls(cls.Config(**cfg.method_params), (5, 7), 3, 2)
    model = method.build_model(seed=0)
    x0 = flat_parameters(model).numpy()
    average = method.server_average(model)

    def snapshot(arrays: list[np.ndarray], commits: int) -> Snapshot:
        entries = tuple(StoreEntry(c, commits, (0, 1), ray.put(a), n_samples=10) for c, a in enumerate(arrays))
        return Snapshot(entries, commits=commits)

    server = ParameterServer([[0, 1], [0, 1]], checkpoint_dir=str(tmp_path), server_average=average)
    first = server.average(snapshot([x0, x0], 0))
    rng = np.random.default_rng(0)
    uploads = [x0 + 0.01 * rng.standard_normal(x0.shape).astype(np.float32) for _ in range(2)]
    second = server.average(snapshot(uploads, 2))
    assert np.array_equal(server.average(snapshot(uploads, 2))[0], second[0])  # no second step
    c = method.cfg
    zero = torch.zeros(x0.shape)
    mean = torch.from_numpy((uploads[0] + uploads[1]) / 2)
    x1, _, _ = fedadam_step(torch.from_numpy(first[0]), mean, zero, zero, c.server_lr, c.beta1, c.beta2, c.tau)
    assert np.allclose(second[0], x1.numpy(), atol=1e-6)
    assert not np.allclose(second[0], (uploads[0] + uploads[1]) / 2)  # a server step, not the average

    restarted = ParameterServer([[0, 1], [0, 1]], checkpoint_dir=str(tmp_path), server_average=average)
    assert np.array_equal(restarted.average(snapshot(uploads, 2))[0], second[0])
    more = [u + 0.01 for u in uploads]
    assert np.array_equal(restarted.average(snapshot(more, 4))[0], server.average(snapshot(more, 4))[0])
