"""Tracking services: every run is an MLflow run, and long runs print a live progress line.

MLflow layout of a run: the flattened config as params; per evaluation, acc/nmi/ari/purity
logged twice, ``step`` = the evaluation's simulated time (``<metric>`` vs simulated time in the
MLflow UI's step axis) and as ``<metric>_by_eval`` with step = evaluation index, each with the
real timestamp (the UI's wall-time axis); artifacts: config.yaml, result.json, upload_log.parquet
and assignments.parquet (final cluster assignment of every sample).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import yaml

from fedsim.config import ExperimentConfig, flatten
from fedsim.errors import ConfigError, shorten, shorten_path
from fedsim.runtime.callbacks import Callback, EvaluationRecord, Progress
from fedsim.runtime.server import UploadRecord

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


@functools.cache
def code_version() -> str:
    """The git commit of the fedsim checkout running this code, with ``+dirty`` when tracked files
    have local changes; ``unknown`` outside a git checkout. Tagged on every run: a change of
    floating-point summation order changes a run's numbers, so a result names its code."""
    root = Path(__file__).resolve().parents[1]
    try:

        def git(*args: str) -> str:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()

        commit = git("rev-parse", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def config_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The resolved config as a run's MLflow params: dotted keys, string values ("null" for None)."""
    return {k: ("null" if v is None else str(v))[:6000] for k, v in flatten(cfg.to_dict()).items()}


def tracking_uri(cfg: ExperimentConfig) -> str:
    return cfg.tracking.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def check_tracking_uri(cfg: ExperimentConfig) -> None:
    """A local MLflow store (``sqlite:///...``, ``file:...`` or a path) must be creatable without
    creating folders: MLflow would make any missing folder, at the filesystem root if the path
    says so, and a store that is a folder (sqlite) or a file (file store) fails only once the run
    has started. Remote stores (http, databricks, ...) are not contacted here."""
    from urllib.parse import urlparse

    uri = tracking_uri(cfg)
    named = (
        "tracking.tracking_uri"
        if cfg.tracking.tracking_uri
        else ("$MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking_uri")
    )
    shown = shorten_path(uri, 80)
    fix = "create the folder or set tracking.tracking_uri (or $MLFLOW_TRACKING_URI)"
    if uri.startswith("sqlite:"):
        if uri == "sqlite://":  # in memory
            return
        if not uri.startswith("sqlite:///"):
            raise ConfigError(
                f"{named} '{shown}' is not an sqlite URI; write sqlite:///relative.db or sqlite:////absolute/path.db"
            )
        path = uri.removeprefix("sqlite:///")
        if path in ("", ":memory:"):
            return
        store, is_file = Path(path.split("?", 1)[0]), True
    else:
        parsed = urlparse(uri)
        if len(parsed.scheme) == 1 and os.name == "nt":  # C:\\...
            return
        if parsed.scheme not in ("", "file"):
            _check_remote_store(uri, parsed, named)
            return
        store, is_file = Path(parsed.path if parsed.scheme == "file" else uri).expanduser(), False
    if store.exists() and store.is_dir() == is_file:
        kind = "a folder" if is_file else "a file"
        raise ConfigError(
            f"{named} '{shown}' names {kind}; the MLflow store must be "
            f"{'an sqlite file' if is_file else 'a folder'}: set another tracking.tracking_uri"
        )
    parent = store.parent if str(store.parent) else Path(".")
    if not store.exists() and not parent.is_dir():
        raise ConfigError(
            f"{named}: folder '{shorten_path(parent, 100)}' does not exist (MLflow would create it); {fix}"
        )


# MLflow's tracking stores by URI scheme (mlflow.tracking._tracking_service.utils registers these;
# plug-ins add theirs under the entry-point group mlflow.tracking_store). Database URIs may name a
# driver: postgresql+psycopg2://...
MLFLOW_SCHEMES = (
    "file",
    "databricks",
    "databricks-uc",
    "uc",
    "http",
    "https",
    "postgresql",
    "mysql",
    "sqlite",
    "mssql",
)
PROBE_TIMEOUT_S = 3.0


def _check_remote_store(uri: str, parsed: Any, named: str) -> None:
    """A store MLflow can open: a scheme MLflow knows, and for an http(s) server, one that
    accepts a connection now (MLflow would otherwise retry for minutes after Ray started)."""
    import socket
    from importlib.metadata import entry_points

    shown = shorten_path(uri, 80)
    scheme = parsed.scheme.lower().split("+", 1)[0]
    known = set(MLFLOW_SCHEMES) | {ep.name for ep in entry_points(group="mlflow.tracking_store")}
    if scheme not in known:
        raise ConfigError(
            f"{named} '{shown}': MLflow has no store for scheme '{shorten(parsed.scheme, 20)}'; use "
            "sqlite:///mlflow.db, a folder, or http(s)://HOST:PORT of an MLflow server"
        )
    if scheme not in ("http", "https") or any(
        os.environ.get(v) for v in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
    ):
        return  # behind a proxy, a direct connection says nothing
    try:
        host, port = parsed.hostname, parsed.port or (443 if scheme == "https" else 80)
    except ValueError:  # a port that is no number or out of range
        host, port = None, None
    if not host or port is None:
        raise ConfigError(f"{named} '{shown}' names no server; write http(s)://HOST:PORT of an MLflow server")
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(
            f"{named} '{shown}': no MLflow server answers at {shorten(host, 40)}:{port} "
            f"({type(exc).__name__}); start it (mlflow server --host 127.0.0.1 --port {port}) or set "
            "another tracking.tracking_uri"
        ) from None


# MLflow 3's UI sorts experiments into GenAI apps and model training by this tag (its web app's
# ExperimentKind values: genai_development, custom_model_development, ...); without it an
# experiment may be shown as a GenAI one, with traces and prompts instead of runs and metrics.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class MLflowTracker(Callback):
    """Opens the MLflow run at start and always closes it: FINISHED, FAILED or KILLED."""

    def __init__(self, cfg: ExperimentConfig) -> None:
        import mlflow

        self.mlflow = mlflow
        self.cfg = cfg
        self.uri = tracking_uri(cfg)
        self.run_id: str | None = None
        self.experiment = cfg.tracking.experiment or f"{cfg.method}/{cfg.dataset}"
        self._prefix = ""  # "restart_<r>/" while model selection runs several trainings
        self._restart = 0
        self._uploads: list[dict[str, Any]] = []  # logged as upload_log.parquet if the run fails
        self._resumed = False

    def start(self) -> str:
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        close_dead_runs(self.uri, self.cfg.runtime.checkpoint_dir)
        experiment = mlflow.set_experiment(self.experiment)
        if EXPERIMENT_KIND_TAG not in (experiment.tags or {}):  # a kind set by hand is kept
            mlflow.MlflowClient(tracking_uri=self.uri).set_experiment_tag(
                experiment.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND
            )
        run = mlflow.start_run(
            run_name=self.cfg.tracking.run_name or f"{self.cfg.method}-{self.cfg.mode}-seed{self.cfg.seed}"
        )
        self.run_id = run.info.run_id
        mlflow.log_params(config_params(self.cfg))
        tags = {
            "fedsim.method": self.cfg.method,
            "fedsim.dataset": self.cfg.dataset,
            "fedsim.mode": self.cfg.mode,
            "fedsim.git_commit": code_version(),
            **self.cfg.tracking.tags,
        }
        if self.cfg.model_selection.runs > 1:
            tags["fedsim.selection"] = (
                "acc (uses labels)" if self.cfg.model_selection.criterion == "acc" else "loss (label-free)"
            )
        if self.cfg.tracking.parent_run_id:
            tags["mlflow.parentRunId"] = self.cfg.tracking.parent_run_id
        tags.update(driver_tags())
        mlflow.set_tags(tags)
        mlflow.log_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False), "config.yaml")
        return self.run_id

    def resume(self, run_id: str) -> str:
        """Reopen the MLflow run of a run whose driver died (``--resume``)."""
        mlflow = self.mlflow
        mlflow.set_tracking_uri(self.uri)
        close_dead_runs(self.uri, self.cfg.runtime.checkpoint_dir)
        client = mlflow.MlflowClient(tracking_uri=self.uri)
        try:
            client.get_run(run_id)
        except Exception:  # noqa: BLE001 - MlflowException: no such run in this store
            raise ConfigError(
                f"--resume: no MLflow run '{run_id[:40]}' in {self.uri}; check the run id and tracking.tracking_uri"
            ) from None
        mlflow.start_run(run_id=run_id)
        self.run_id, self._resumed = run_id, True
        mlflow.set_tags(
            {**driver_tags(), "fedsim.resumed": f"by pid {os.getpid()} at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}"}
        )
        return run_id

    def on_run_start(self, info: dict[str, Any]) -> None:
        if self._resumed:  # logged by the run's first driver (a param cannot change)
            return
        self.mlflow.log_params({f"federation.{k}": str(v)[:6000] for k, v in info.items()})

    def on_restart(self, restart: int, runs: int) -> None:
        self._prefix = f"restart_{restart}/"
        self._restart = restart

    def on_upload(self, record: UploadRecord, progress: Progress) -> None:
        self._uploads.append({**asdict(record), "restart": self._restart})

    def on_evaluation(self, record: EvaluationRecord, progress: Progress) -> None:
        ts = int(time.time() * 1000)
        metrics = {
            **record.metrics,
            "sim_time": record.sim_time,
            "wall_time": record.wall_time,
            "uploads": float(record.uploads),
        }
        p = self._prefix
        self.mlflow.log_metrics({p + k: v for k, v in metrics.items()}, step=int(round(record.sim_time)), timestamp=ts)
        self.mlflow.log_metrics(
            {f"{p}{k}_by_eval": v for k, v in record.metrics.items()}, step=record.step, timestamp=ts
        )

    def on_run_end(self, result: Any) -> None:
        mlflow = self.mlflow
        with tempfile.TemporaryDirectory() as tmp:
            write_upload_log(result.upload_log, Path(tmp) / "upload_log.parquet")
            result.assignments.to_parquet(Path(tmp) / "assignments.parquet")
            mlflow.log_artifacts(tmp)
        summary = {f"final_{k}": v for k, v in result.metrics.items()}
        summary.update(
            final_sim_time=result.sim_time, final_wall_time=result.wall_time, actor_restarts=float(result.restarts)
        )
        mlflow.log_metrics(summary)
        mlflow.end_run("FINISHED")

    def log_privacy(self, report: dict[str, Any]) -> None:
        """The DP accounting (``fedsim.privacy``): per client ``privacy_epsilon/client_<c>`` and
        ``privacy_releases/client_<c>``, the maxima ``privacy_epsilon_max`` and
        ``privacy_releases_max``, and the whole table as ``privacy_accounting.json``."""
        metrics = {
            "privacy_epsilon_max": report["epsilon_max"],
            "privacy_releases_max": float(report["releases_max"]),
            "privacy_releases_total": float(report["releases_total"]),
            "privacy_epsilon_target": report["epsilon_target"],
            "privacy_capped_clients": float(len(report["capped_clients"])),
        }
        for row in report["clients"]:
            metrics[f"privacy_epsilon/client_{row['client']}"] = row["epsilon"]
            metrics[f"privacy_releases/client_{row['client']}"] = float(row["releases"])
            metrics[f"privacy_noise_multiplier/client_{row['client']}"] = row["noise_multiplier"]
        self.mlflow.log_metrics(metrics)
        self.mlflow.log_dict(report, "privacy_accounting.json")

    def log_result(self, result_json: dict[str, Any]) -> None:
        self.mlflow.log_dict(result_json, "result.json")

    def on_run_failed(self, error: BaseException) -> None:
        """FAILED (KILLED for Ctrl-C), with the error and the uploads committed until then."""
        status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        if self.mlflow.active_run() is not None:
            self.mlflow.set_tag("fedsim.error", f"{type(error).__name__}: {error}"[:5000])
            if self._uploads:
                import pandas as pd

                try:
                    with tempfile.TemporaryDirectory() as tmp:
                        write_upload_log(pd.DataFrame(self._uploads), Path(tmp) / "upload_log.parquet")
                        self.mlflow.log_artifacts(tmp)
                except Exception as exc:  # noqa: BLE001 - the run is closed whatever happens here
                    self.mlflow.set_tag("fedsim.upload_log_error", f"{type(exc).__name__}: {exc}"[:500])
            self.mlflow.end_run(status)


def write_upload_log(log: Any, path: Path) -> None:
    """The upload log as parquet (``info``, a dict per upload, as a JSON string; so is
    ``versions_read`` in a run of bounded peer aggregation, whose rounds record {client: version}
    beside the pretraining rounds' lists, which no one parquet type holds)."""
    log = log.copy()
    log["info"] = log["info"].map(lambda d: json.dumps(d, default=float))
    if "versions_read" in log and any(isinstance(v, dict) for v in log["versions_read"]):
        log["versions_read"] = log["versions_read"].map(json.dumps)
    log.to_parquet(path)


# -- runs whose driver died ----------------------------------------------------------------------
HOST_TAG, PID_TAG, PROCESS_START_TAG = "fedsim.driver_host", "fedsim.driver_pid", "fedsim.driver_started"


def driver_tags() -> dict[str, str]:
    """Who runs this MLflow run: host, process id and the process's start time (a pid alone can
    be reused), so a later command can tell a run whose driver died from one still going."""
    import socket

    import psutil

    me = psutil.Process()
    return {HOST_TAG: socket.gethostname(), PID_TAG: str(me.pid), PROCESS_START_TAG: repr(me.create_time())}


def _driver_alive(tags: dict[str, str]) -> bool:
    import psutil

    try:
        process = psutil.Process(int(tags[PID_TAG]))
        return repr(process.create_time()) == tags.get(PROCESS_START_TAG)
    except (psutil.NoSuchProcess, ValueError):
        return False
    except psutil.AccessDenied:
        return True  # someone else's live process: not ours to judge


def close_dead_runs(uri: str, checkpoint_dir: str | None = None) -> list[str]:
    """Mark KILLED every RUNNING run of this store whose driver ran on this host and is gone
    (``kill -9``, a crash, a lost terminal), with a tag saying so; its upload log, kept in its
    checkpoint folder, is logged as upload_log.parquet. Runs of other hosts, or without the
    driver tags (older runs, sweep summaries), are left alone. Returns the run ids closed."""
    import socket

    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    host = socket.gethostname()
    closed = []
    try:
        experiments = [e.experiment_id for e in client.search_experiments()]
        running = (
            client.search_runs(experiments, "attributes.status = 'RUNNING'", max_results=1000) if experiments else []
        )
    except Exception:  # noqa: BLE001 - a store we cannot search: nothing to clean up here
        return closed
    for run in running:
        tags = run.data.tags
        if tags.get(HOST_TAG) != host or PID_TAG not in tags or _driver_alive(tags):
            continue
        run_id = run.info.run_id
        client.set_tag(
            run_id,
            "fedsim.ended_by",
            f"driver process {tags[PID_TAG]} on {host} was gone (killed or crashed); closed as KILLED by a "
            f"later fedsim command (pid {os.getpid()}) at {time.strftime('%Y-%m-%dT%H:%M:%S%z')}",
        )
        if checkpoint_dir is not None:
            _log_checkpointed_uploads(client, run_id, Path(checkpoint_dir).expanduser() / run_id)
        client.set_terminated(run_id, "KILLED")
        closed.append(run_id)
    return closed


def _log_checkpointed_uploads(client: Any, run_id: str, folder: Path) -> None:
    """The upload log a dead run's parameter server checkpointed (every restart's, in order)."""
    import pandas as pd

    from fedsim.runtime.checkpoint import ServerCheckpoint

    frames = []
    restarts = [(int(p.name[1:]), p) for p in folder.glob("r*") if p.name[1:].isdigit()]
    for restart, sub in [(0, folder), *sorted(restarts)]:
        ckpt = ServerCheckpoint(sub)
        if ckpt.exists():
            records = ckpt.load_records(ckpt.load_meta()["log_bytes"])
            if records:
                frames.append(pd.DataFrame(records).assign(restart=restart))
    if not frames:
        return
    with tempfile.TemporaryDirectory() as tmp:
        write_upload_log(pd.concat(frames, ignore_index=True), Path(tmp) / "upload_log.parquet")
        client.log_artifacts(run_id, tmp)


def eta_seconds(done: int, total: int, elapsed_s: float) -> float | None:
    """Seconds left at the rate so far; None before the first upload or once all are done."""
    if done <= 0 or total <= done or elapsed_s <= 0:
        return None
    return elapsed_s * (total - done) / done


def format_duration(seconds: float) -> str:
    """``45s``, ``1m20s``, ``2h05m``."""
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


class ProgressPrinter(Callback):
    """One live line on stderr: uploads, rounds per client, simulated time, latest ACC."""

    def __init__(self, stream: Any = None, min_interval_s: float = 0.5) -> None:
        self.stream = stream or sys.stderr
        self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.min_interval = min_interval_s if self.tty else 10.0
        self._last = 0.0
        self._restart = ""
        self._base: tuple[float, int] | None = None  # (wall, uploads) when the federation began

    def on_restart(self, restart: int, runs: int) -> None:
        self._restart = f" restart {restart + 1}/{runs}"
        self._base = None

    def _eta(self, p: Progress) -> str:
        """`` | ETA 1m20s`` from the federation's upload rate so far (pretraining excluded)."""
        if self._base is None or p.wall_time < self._base[0]:
            self._base = (p.wall_time, p.uploads)
        if not p.expected_uploads:
            return ""
        seconds = eta_seconds(
            p.uploads - self._base[1], p.expected_uploads - self._base[1], p.wall_time - self._base[0]
        )
        return "" if seconds is None else f" | ETA {format_duration(seconds)}"

    def on_run_start(self, info: dict[str, Any]) -> None:
        where = (
            f"; Ray dashboard {info['dashboard_url']} (bearer token: ~/.ray/auth_token)"
            if info.get("dashboard_url")
            else ""
        )
        self.stream.write(
            f"fedsim: {len(info['client_kinds'])} clients ({info['client_kinds']}) on {info['actors']} actors, "
            f"{info['num_parameters']:,} parameters per model{where}\n"
        )
        self.stream.flush()

    def _line(self, p: Progress) -> str:
        if p.phase == "pretrain":
            done, planned = p.pretrain_rounds
            return (
                f"[{p.mode}{self._restart}] pretraining (Alg. 1): round {done + 1}/{planned} | wall {p.wall_time:.1f}s"
            )
        total = f"/{p.expected_uploads}" if p.expected_uploads else ""
        m = p.latest_metrics
        acc = f" | ACC {m['acc']:.3f}" if "acc" in m else f" | accuracy {m['accuracy']:.3f}" if "accuracy" in m else ""
        return (
            f"[{p.mode}{self._restart}] uploads {p.uploads}{total} | rounds/client {min(p.rounds_done)}..{max(p.rounds_done)}"
            f" | sim {p.sim_time:.4g} | wall {p.wall_time:.1f}s{acc}{self._eta(p)}"
        )

    def _emit(self, p: Progress, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        end = "\r" if self.tty else "\n"
        self.stream.write(self._line(p).ljust(100 if self.tty else 0) + end)
        self.stream.flush()

    def on_upload(self, record: UploadRecord, progress: Progress) -> None:
        self._emit(progress)

    def on_evaluation(self, record: EvaluationRecord, progress: Progress) -> None:
        self._emit(progress, force=True)

    def on_run_end(self, result: Any) -> None:
        if self.tty:
            self.stream.write("\n")
            self.stream.flush()
