"""Shared fixtures: one local Ray for the whole session (2 CPUs, no dashboard) and small configs."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_configure(config):
    # Unit tests train small models in the test process itself: one torch thread, as Ray gives
    # the actors, since two threads fighting the Ray workers for 2 cores run 20-40x slower.
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        # address="local": our own Ray, never another one running on this machine
        ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


SMALL_SYNTHETIC = {
    "method": "afmcc",
    "dataset": "synthetic",
    "synthetic": {"view_dims": [12, 16, 20], "n_clusters": 3, "n_samples": 240, "noise": 0.2},
    "num_clients": 4,
    "client_ratio": "1:1:1",
    "mode": "virtual",
    "seed": 0,
    "rounds": 3,
    "eval_every": 1,
    "kmeans_n_init": 3,
    "pretrain": {"rounds": 1},
    "tracking": {"enabled": False, "progress": False},
    "afmcc": {"d": 6, "hidden": [32, 16], "phi": 2},
}


@pytest.fixture
def small_config():
    """A few-second federation on synthetic data: build it with overrides."""
    from fedsim.config import build_config

    def make(*overrides: str, **changes):
        raw = {**SMALL_SYNTHETIC, **changes}
        return build_config(raw, list(overrides))

    return make
