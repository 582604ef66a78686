"""Shared fixtures: one local Ray for the whole session (2 CPUs, no dashboard) and small configs."""

from __future__ import annotations

import os
import tempfile
import time
import warnings

import pytest

os.environ.setdefault("RAY_DEDUP_LOGS", "0")


def pytest_configure(config):
    # Unit tests train small models in the test process itself: one torch thread, as Ray gives
    # the actors, since two threads fighting the Ray workers for 2 cores run 20-40x slower.
    import torch

    torch.set_num_threads(1)


# Tests marked benchmark_data read the real files of ../shared/data (MANIFEST.md). On a clone
# without them they are left out, with one line saying which and where the files go; in CI (CI set)
# or with FEDSIM_REQUIRE_DATA=1 they always run, so missing files fail there instead.
REQUIRE_DATA_ENV = "FEDSIM_REQUIRE_DATA"
_LEFT_OUT = pytest.StashKey[list]()


def benchmark_folder():
    """The folder holding the benchmark files (the one with MANIFEST.md), or None."""
    from fedsim.data.datasets import search_paths

    return next((folder for folder in search_paths(None) if (folder / "MANIFEST.md").is_file()), None)


def pytest_collection_modifyitems(config, items):
    needing = [item for item in items if item.get_closest_marker("benchmark_data")]
    required = os.environ.get("CI", "").lower() not in ("", "0", "false") or os.environ.get(REQUIRE_DATA_ENV) == "1"
    if not needing or required or benchmark_folder() is not None:
        return
    config.hook.pytest_deselected(items=needing)
    items[:] = [item for item in items if not item.get_closest_marker("benchmark_data")]
    config.stash[_LEFT_OUT] = needing


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    left_out = config.stash.get(_LEFT_OUT, [])
    if not left_out:
        return
    from fedsim.data.datasets import search_paths

    names: dict[str, int] = {}
    for item in left_out:
        name = f"{item.path.name}::{item.originalname}"
        names[name] = names.get(name, 0) + 1
    listed = ", ".join(f"{name} (x{count})" if count > 1 else name for name, count in names.items())
    terminalreporter.write_line(
        f"fedsim: left out {len(left_out)} tests that need the benchmark files: {listed}; to run them, put the "
        f"files of shared/data/MANIFEST.md (with MANIFEST.md) in one of {', '.join(map(str, search_paths(None)))} "
        f"(or set $FEDSIM_DATA_DIR); {REQUIRE_DATA_ENV}=1 makes their absence an error"
    )


def _start_ray():
    import ray

    # address="local": our own Ray, never another one running on this machine
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")


@pytest.fixture(scope="session")
def ray_session():
    import ray

    if not ray.is_initialized():
        _start_ray()
    yield ray
    ray.shutdown()


@pytest.fixture(autouse=True)
def _ray_cpus_handed_back(request):
    """After each test on the shared Ray: every CPU free again, or a fresh Ray for the next test.

    Once in CI a killed actor's CPU never came back (Ray had reported the actor dead): every
    later test whose actors needed both CPUs then pended until its start-up timeout, 40 minutes
    in all. The test that left the CPU held gets a warning naming it; the rest start clean.
    (Whether a failed run hands its CPUs back is asserted in test_cluster.py, not here.)"""
    yield
    if "ray_session" not in request.fixturenames:
        return
    import ray

    if not ray.is_initialized():
        return
    total = ray.cluster_resources().get("CPU", 0.0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ray.available_resources().get("CPU", 0.0) >= total - 1e-6:
            return
        time.sleep(0.2)
    held = total - ray.available_resources().get("CPU", 0.0)
    warnings.warn(
        f"{request.node.nodeid} left {held:g} of {total:g} CPUs held on the shared Ray 30 s after it "
        "ended; restarting Ray for the tests after it",
        stacklevel=1,
    )
    ray.shutdown()
    _start_ray()


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
    # A round here takes well under a second; if one ever hangs, fail in 2 minutes, not 10.
    "runtime": {"round_timeout_s": 120, "checkpoint_dir": tempfile.mkdtemp(prefix="fedsim-test-runs-")},
}


@pytest.fixture
def small_config():
    """A few-second federation on synthetic data: build it with overrides."""
    from fedsim.config import build_config

    def make(*overrides: str, **changes):
        raw = {**SMALL_SYNTHETIC, **changes}
        return build_config(raw, list(overrides))

    return make
