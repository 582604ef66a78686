"""Ray start-up (issue 26, item 5): a taken dashboard port falls back to a free one, and a Ray
that cannot start or be reached is one ``fedsim: error:`` line saying what to do, exit 2, with
no MLflow run. All but the last test replace ``ray.init``; the last starts a real local Ray in a
subprocess (its own Ray, never the test session's)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import fedsim.runtime.cluster as cluster
from fedsim.cli import main
from fedsim.config import build_config
from tests.conftest import SMALL_SYNTHETIC

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def taken_port():
    """A port something listens on at 127.0.0.1, as another run's dashboard would."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield server.getsockname()[1]


class FakeRay:
    """``ray.init`` that records its keyword arguments and fails as told, call by call."""

    def __init__(self, monkeypatch, failures=()):
        self.calls: list[dict] = []
        self.failures = list(failures)
        monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
        monkeypatch.setattr(cluster.ray, "init", self.init)
        monkeypatch.setattr(cluster.ray, "shutdown", lambda: None)  # never the session's Ray

    def init(self, **kwargs):
        self.calls.append(kwargs)
        if self.failures:
            raise self.failures.pop(0)
        return SimpleNamespace(dashboard_url=f"127.0.0.1:{kwargs.get('dashboard_port', 0)}")


def _cfg(*overrides):
    return build_config(SMALL_SYNTHETIC, ["runtime.include_dashboard=true", *overrides])


def test_free_port_keeps_a_free_port_and_replaces_a_taken_one(taken_port):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    assert cluster.free_port("127.0.0.1", free) == free
    other = cluster.free_port("127.0.0.1", taken_port)
    assert other != taken_port and 0 < other < 65536


def test_taken_dashboard_port_falls_back_to_a_free_one(monkeypatch, capsys, taken_port):
    fake = FakeRay(monkeypatch)
    info = cluster.ensure_ray(_cfg(f"runtime.dashboard_port={taken_port}"))
    (call,) = fake.calls
    assert call["dashboard_host"] == "127.0.0.1" and call["include_dashboard"] is True
    assert call["dashboard_port"] != taken_port
    assert info == {"dashboard_url": f"http://127.0.0.1:{call['dashboard_port']}", "owned": True}
    # other tests' once-per-process warnings may share stderr; this one must be there, once
    (line,) = [x for x in capsys.readouterr().err.splitlines() if x.startswith("fedsim: warning: dashboard port")]
    assert str(call["dashboard_port"]) in line


def test_port_taken_while_ray_starts_is_retried_on_another(monkeypatch, capsys):
    """Ray 2.60's own check raises this ValueError when the port went between our probe and it."""
    clash = ValueError(
        "Failed to bind to 127.0.0.1:8265 because it's already occupied. You can use `ray start "
        "--dashboard-port ...` or `ray.init(dashboard_port=...)` to select a different port."
    )
    fake = FakeRay(monkeypatch, [clash])
    info = cluster.ensure_ray(_cfg("runtime.dashboard_port=65000"))
    first, second = fake.calls
    assert second["include_dashboard"] is True and second["dashboard_port"] not in (None, first["dashboard_port"])
    assert info["dashboard_url"].endswith(f":{second['dashboard_port']}")
    assert "was taken while Ray started" in capsys.readouterr().err


def test_dashboard_that_cannot_start_runs_without_it(monkeypatch, capsys):
    fake = FakeRay(monkeypatch, [Exception("Cannot include dashboard with missing packages.")])
    info = cluster.ensure_ray(_cfg())
    assert fake.calls[1]["include_dashboard"] is False and "dashboard_port" not in fake.calls[1]
    assert info["owned"] is True
    assert "running without it" in capsys.readouterr().err


def _run_cli(tmp_path, monkeypatch, capsys, *extra):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/mlflow.db")
    cfg = tmp_path / "cfg.yaml"
    # no dashboard: its port may be taken here (a warning line), which is not what these test
    cfg.write_text(
        yaml.safe_dump(
            {
                **SMALL_SYNTHETIC,
                "tracking": {"enabled": True, "progress": False},
                "runtime": {"include_dashboard": False},
            }
        )
    )
    code = main(["run", str(cfg), *extra])
    out, err = capsys.readouterr()
    return code, err.splitlines()


@pytest.mark.parametrize(
    "failure",
    [
        RuntimeError("Failed to start the GCS server.\n" + "\n".join(f"log line {i}" for i in range(20))),
        OSError(28, "No space left on device"),
    ],
)
def test_ray_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys, failure):
    FakeRay(monkeypatch, [failure, failure])
    code, lines = _run_cli(tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = lines
    assert line.startswith("fedsim: error: Ray did not start (") and "/tmp/ray/session_latest/logs" in line
    assert len(line) <= 300
    assert not (tmp_path / "mlflow.db").exists()  # Ray starts before the MLflow run opens


def test_unreachable_cluster_is_one_line(tmp_path, monkeypatch, capsys):
    FakeRay(monkeypatch, [ConnectionError("Could not find any running Ray instance. Please specify ...")])
    monkeypatch.setenv("RAY_ADDRESS", "10.255.255.1:6379")
    code, lines = _run_cli(tmp_path, monkeypatch, capsys)
    assert code == 2
    (line,) = lines
    assert "cannot reach the Ray cluster at RAY_ADDRESS='10.255.255.1:6379'" in line and len(line) <= 300
    assert not (tmp_path / "mlflow.db").exists()


@pytest.mark.parametrize("handler", ["default", "custom"])
def test_start_up_that_outlasts_the_timeout_is_one_line(tmp_path, monkeypatch, capsys, handler):
    """A Ray whose start-up hangs (a loaded machine: Ray's own waits added up to minutes) is
    stopped at runtime.start_timeout_s and reported in one line, also where an earlier caller
    left its own SIGINT handler installed (which is put back afterwards)."""
    import signal

    def custom(signum, frame):
        pass

    previous = signal.signal(signal.SIGINT, custom) if handler == "custom" else None
    try:
        _outlast_the_timeout(tmp_path, monkeypatch, capsys)
        if previous is not None:
            assert signal.getsignal(signal.SIGINT) is custom
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)


def _outlast_the_timeout(tmp_path, monkeypatch, capsys):
    import time

    def hang(**kwargs):
        time.sleep(60)

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", hang)
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: None)
    started = time.monotonic()
    code, lines = _run_cli(tmp_path, monkeypatch, capsys, "--set", "runtime.start_timeout_s=1.5")
    assert time.monotonic() - started < 15
    assert code == 2
    (line,) = lines
    assert (
        line.startswith("fedsim: error: Ray did not start within 1.5 s (runtime.start_timeout_s") and len(line) <= 300
    )
    assert not (tmp_path / "mlflow.db").exists()


def test_cluster_that_does_not_answer_in_time_is_one_line(tmp_path, monkeypatch, capsys):
    import time

    monkeypatch.setattr(cluster.ray, "is_initialized", lambda: False)
    monkeypatch.setattr(cluster.ray, "init", lambda **kwargs: time.sleep(60))
    monkeypatch.setattr(cluster.ray, "shutdown", lambda: None)
    monkeypatch.setenv("RAY_ADDRESS", "10.255.255.1:6379")
    code, lines = _run_cli(tmp_path, monkeypatch, capsys, "--set", "runtime.start_timeout_s=1")
    assert code == 2
    (line,) = lines
    assert "10.255.255.1:6379' did not answer within 1 s" in line and len(line) <= 300


def test_a_start_up_within_the_timeout_is_not_interrupted(monkeypatch):
    """The timer that bounds start-up is gone once Ray is up: nothing interrupts the run later."""
    import time

    fake = FakeRay(monkeypatch)
    cluster.ensure_ray(_cfg("runtime.start_timeout_s=0.3"))
    time.sleep(0.6)  # a stray interrupt would raise KeyboardInterrupt here
    assert len(fake.calls) == 1


def test_local_rays_bind_to_loopback_and_clusters_keep_their_own(monkeypatch):
    fake = FakeRay(monkeypatch)
    cluster.ensure_ray(_cfg())
    monkeypatch.setenv("RAY_ADDRESS", "local")  # Ray's word for a fresh local Ray: ours
    cluster.ensure_ray(_cfg())
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    cluster.ensure_ray(_cfg())
    local, also_local, joined = fake.calls
    for call in (local, also_local):
        assert call["address"] == "local" and call["_node_ip_address"] == "127.0.0.1"
        assert call["dashboard_host"] == "127.0.0.1"
    assert joined == {"address": "10.0.0.5:6379", "logging_level": "WARNING"}  # Ray's own settings


LISTENING = """
import json, sys
sys.path.insert(0, {root!r})
import psutil
from fedsim.config import build_config
from fedsim.runner import run_experiment
from fedsim.runtime.callbacks import Callback
from tests.conftest import SMALL_SYNTHETIC


class Listeners(Callback):
    \"\"\"Once the actors run: every TCP socket this driver and the Ray it started listen on.\"\"\"

    found = []

    def on_run_start(self, info):
        for proc in [psutil.Process(), *psutil.Process().children(recursive=True)]:
            try:
                for conn in proc.net_connections(kind="tcp"):
                    if conn.status == psutil.CONN_LISTEN:
                        self.found.append([conn.laddr.ip, conn.laddr.port, proc.name()])
            except psutil.Error:
                pass


cfg = build_config(SMALL_SYNTHETIC, ["runtime.include_dashboard=true", "runtime.num_cpus=1",
                                     "runtime.dashboard_port={port}", "runtime.checkpoint_dir=null"])
out = run_experiment(cfg, callbacks=[Listeners()]).summary
print(json.dumps({{"dashboard_url": out["dashboard_url"], "acc": out["acc"], "listening": Listeners.found}}))
"""


def test_real_run_moves_its_dashboard_off_a_taken_port_and_listens_on_loopback_only(tmp_path, taken_port):
    """Ray 2.60 itself, in a subprocess (its own Ray, never the test session's): a whole run whose
    dashboard port is taken comes up on another port, and while its actors run, every socket
    that the driver, Ray's servers and the actors listen on is on 127.0.0.1 (issue 26, item 6)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    script = LISTENING.format(root=str(ROOT), port=taken_port)
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=400, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["dashboard_url"].startswith("http://127.0.0.1:")
    assert not out["dashboard_url"].endswith(f":{taken_port}")
    assert f"dashboard port {taken_port} is taken" in proc.stderr
    assert out["acc"] == out["acc"]  # the run finished with a score
    names = {name for _, _, name in out["listening"]}
    assert {"gcs_server", "raylet"} <= names, out["listening"]
    exposed = [entry for entry in out["listening"] if entry[0] not in ("127.0.0.1", "::ffff:127.0.0.1", "::1")]
    assert not exposed, f"listening beyond loopback: {exposed}"
