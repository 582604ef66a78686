"""The Tune runner: a grid (fedsim/sweeps/grid.py) run on Ray Tune, tracked in MLflow.

``plan_sweep`` checks that every trial's config builds before anything starts; ``run_sweep``
runs the trials and logs the summary (fedsim/sweeps/results.py) on the sweep's MLflow run.

Each trial is a Ray Tune function trainable that runs one federation (``run_experiment``) and
creates its own client actors; ``tune.with_resources`` reserves a placement group with one
bundle per actor (plus the trainable's and the parameter server's), so concurrent trials never
starve each other. Each trial is an MLflow run, a child of the sweep's summary run, which at the
end holds the grid's table (mean +- std over seeds, the paper's value beside ours) as Parquet and
Markdown, and plots (a heatmap for 2-D grids, ACC against simulated time for asynchronous runs).

An interrupted sweep resumes where it stopped (``Tuner.restore``): finished trials are kept,
unfinished ones rerun, and MLflow runs the dead driver left RUNNING are marked KILLED.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from fedsim.config import build_config, load_yaml
from fedsim.errors import FedsimError, shorten
from fedsim.sweeps.grid import ROOT, GridSpec, load_grid, override_strings, restrict_grid
from fedsim.sweeps.results import score_keys, summarise_grid, summary_markdown, write_plots

HEAD_BUNDLE_CPUS = 0.01


@dataclass
class SweepPlan:
    """One grid on one dataset, checked and sized: what ``run_sweep`` runs."""

    spec: GridSpec
    dataset: str
    base: dict[str, Any]
    overrides: list[str]
    experiment: str
    storage: Path
    trial_cpus: float
    trial_gpus: float
    actors_per_trial: int
    clients_per_actor: int
    extra: list[str] = field(default_factory=list)  # the user's --set overrides (EXTRA=...)
    only: list[str] = field(default_factory=list)  # axes cut to some values (ONLY=...)

    @property
    def command(self) -> str:
        """The command that reruns this sweep (the report prints it beside each table)."""
        extra = f' EXTRA="{" ".join(self.extra)}"' if self.extra else ""
        only = f' ONLY="{" ".join(self.only)}"' if self.only else ""
        return f"make sweep DATASET={self.dataset} METHOD={self.spec.method} GRID={self.spec.name}{only}{extra}"


def sweep_base(
    spec: GridSpec, dataset: str, extra: list[str] | tuple[str, ...] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The config mapping and overrides every trial of ``spec`` on ``dataset`` starts from; a
    trial adds ``spec.trial_overrides(point)``."""
    base_path = spec.config.format(dataset=dataset.removeprefix("synthetic-"))
    if not (ROOT / base_path).is_file() and not Path(base_path).is_file():
        base_path = spec.config.format(dataset="bdgp")  # synthetic-only shapes borrow BDGP's defaults
    base = load_yaml(ROOT / base_path if (ROOT / base_path).is_file() else base_path)
    overrides = [
        f"dataset={dataset}",
        *(override_strings(spec.fixed)),
        *(override_strings(spec.datasets.get(dataset, {}))),
        *extra,
    ]
    return base, overrides


def plan_sweep(
    method: str,
    dataset: str,
    grid: str,
    extra: list[str],
    trial_cpus: float | None = None,
    trial_gpus: float = 0.0,
    storage: str | Path = "results/sweeps",
    only: list[str] | tuple[str, ...] = (),
) -> SweepPlan:
    """Validate the whole grid before anything starts: every trial's config must build. ``only``
    runs part of the grid (``restrict_grid``); its trials count towards the same table."""
    spec = restrict_grid(load_grid(method, grid), list(only))
    base, overrides = sweep_base(spec, dataset, extra)
    configs = [build_config(base, overrides + spec.trial_overrides(t)) for t in spec.trials]
    u = max(c.num_clients for c in configs)
    # Default: one torch thread's CPU per client actor, at most the whole machine. A client actor
    # never uses more than runtime.torch_threads cores, so a one-client (centralised) trial that
    # reserved every CPU would leave the rest of a small machine idle instead of running a second
    # trial beside it.
    machine = float(os.cpu_count() or 1)
    wanted = max(c.num_clients * c.runtime.torch_threads for c in configs)
    cpus = trial_cpus if trial_cpus is not None else min(machine, float(wanted))
    actors = max(1, min(u, int(cpus)))
    if trial_gpus:
        actors = max(actors, math.ceil(u / configs[0].runtime.clients_per_gpu))
    # The data file must be there before Tune starts 15 trials that would all fail on it.
    from fedsim.runtime.federation_data import load_federation

    load_federation(configs[0])
    name = f"{method}_{dataset}_{grid}"
    if only:  # a part of the grid keeps its own Tune state (a resume must see the same trials)
        name += "__" + "_".join(o.replace("=", "-").replace(",", "+").replace(":", "-") for o in only)
    return SweepPlan(
        spec,
        dataset,
        base,
        overrides,
        experiment=f"sweep/{method}/{dataset}/{grid}",
        storage=Path(storage).resolve() / name,
        trial_cpus=cpus,
        trial_gpus=trial_gpus,
        actors_per_trial=actors,
        clients_per_actor=math.ceil(u / actors),
        extra=list(extra),
        only=list(only),
    )


# ---------------------------------------------------------------------------------------------
# The trial


def fedsim_trial(config: dict[str, Any], context: dict[str, Any]) -> None:
    """Ray Tune function trainable: one federation, reported to Tune per evaluation.

    ``config`` holds only the grid point (what Tune shows and records); ``context`` the sweep's
    shared set-up, passed once through the object store by ``tune.with_parameters``."""
    from ray import tune

    from fedsim.runner import run_experiment
    from fedsim.runtime.callbacks import Callback

    class TuneReporter(Callback):
        def on_evaluation(self, record, progress) -> None:  # noqa: ANN001
            if not record.final:
                tune.report({**record.metrics, "sim_time": record.sim_time, "uploads": record.uploads})

    params = config
    ctx = context
    key = trial_key(params)
    done = _finished_trial_summary(ctx["parent_run_id"], key)
    if done is not None:  # finished before the driver died, but Tune had not recorded it yet
        tune.report(_final_report(done, params, ctx["spec"].method))
        return
    overrides = ctx["overrides"] + ctx["spec"].trial_overrides(params)
    cpus, gpus = trial_actor_resources(ctx, build_config(ctx["base"], overrides).num_clients)
    cfg = build_config(
        ctx["base"],
        overrides
        + [
            f"tracking.tags={json.dumps({'fedsim.trial': key, 'fedsim.grid_point': json.dumps(params)})}",
            f"tracking.experiment={ctx['experiment']}",
            f"tracking.parent_run_id={ctx['parent_run_id']}",
            f"tracking.run_name={'-'.join(f'{k}={v}' for k, v in params.items())}",
            "tracking.progress=false",
            f"runtime.num_cpus={cpus}",
            f"runtime.num_gpus={gpus}",
            f"runtime.clients_per_actor={ctx['clients_per_actor']}",
            "runtime.include_dashboard=false",
        ],
    )
    outcome = run_experiment(cfg, callbacks=[TuneReporter()])
    tune.report(_final_report(outcome.summary, params, ctx["spec"].method))


def trial_actor_resources(ctx: dict[str, Any], num_clients: int) -> tuple[float, float]:
    """The CPUs and GPUs (``runtime.num_cpus`` / ``num_gpus``) a trial's client actors ask for.

    The placement group has one bundle per actor of the grid's largest trial; a trial with fewer
    clients (a centralised row beside 12-client ones) starts fewer actors, and each must ask for
    one bundle's share, not for all the trial's CPUs, which fit no bundle (Tune then fails the
    trial: "cannot fit into any bundles")."""
    n_actors = min(ctx["actors_per_trial"], math.ceil(num_clients / ctx["clients_per_actor"]))
    share = n_actors / ctx["actors_per_trial"]
    return ctx["actor_cpus"] * share, ctx["actor_gpus"] * share


def trial_key(params: dict[str, Any]) -> str:
    """A stable id of a grid point, tagged on its MLflow run (``fedsim.trial``)."""
    return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]


def _final_report(s: dict[str, Any], params: dict[str, Any], method: str) -> dict[str, Any]:
    return {
        **{k: s[k] for k in score_keys(s, method)},
        "sim_time": s["simulated_time"],
        "wall_time_s": s["wall_time"],
        "uploads": s["uploads"],
        "mlflow_run_id": s["mlflow_run_id"],
        "history": json.dumps(s["history"]),
        "done_params": json.dumps(params),
    }


def _finished_trial_summary(parent_run_id: str, key: str) -> dict[str, Any] | None:
    """The result JSON of this grid point's FINISHED MLflow run under this sweep, if any: a
    resumed sweep never trains a finished grid point twice."""
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_run_id)
    runs = client.search_runs(
        [parent.info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_run_id}' and tags.`fedsim.trial` = '{key}' and attributes.status = 'FINISHED'",
        max_results=1,
    )
    if not runs:
        return None
    return mlflow.artifacts.load_dict(f"runs:/{runs[0].info.run_id}/result.json")


# ---------------------------------------------------------------------------------------------
# The sweep


def run_sweep(
    plan: SweepPlan, max_failures: int = 1, fresh: bool = False, max_concurrent: int | None = None, verbose: int = 1
) -> dict[str, Any]:
    import mlflow
    import ray
    from ray import tune
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from fedsim.tracking import DEFAULT_TRACKING_URI, code_version

    uri = os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        uri = "sqlite:///" + str(Path(uri.removeprefix("sqlite:///")).resolve())  # trials run elsewhere
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(plan.experiment)
    plan.storage.parent.mkdir(parents=True, exist_ok=True)
    state_file = plan.storage.parent / f"{plan.storage.name}.parent.json"
    resume = not fresh and state_file.is_file() and tune.Tuner.can_restore(str(plan.storage))
    if resume:
        parent_id = json.loads(state_file.read_text())["parent_run_id"]
        _mark_stale_children(parent_id)
    else:
        with mlflow.start_run(run_name=f"{plan.spec.name} summary") as parent:
            parent_id = parent.info.run_id
            mlflow.set_tags(
                {
                    "fedsim.sweep": plan.spec.name,
                    "fedsim.reproduces": plan.spec.reproduces,
                    "fedsim.dataset": plan.dataset,
                    "fedsim.method": plan.spec.method,
                    "fedsim.extra": json.dumps(plan.extra),
                    "fedsim.command": plan.command,
                    "fedsim.git_commit": code_version(),
                }
            )
            mlflow.log_dict({"grid": plan.spec.grid, "overrides": plan.overrides}, "grid.json")
        mlflow.MlflowClient().update_run(parent_id, status="RUNNING")  # until the table is logged
        state_file.write_text(json.dumps({"parent_run_id": parent_id}))

    owned = not ray.is_initialized()
    if owned:
        try:
            address = os.environ.get("RAY_ADDRESS")
            if address and address.strip() != "local":
                ray.init(address=address, logging_level="WARNING")  # a cluster: its own settings
            else:
                from fedsim.runtime.cluster import init_local_ray

                init_local_ray(logging_level="WARNING")  # every server on 127.0.0.1 only
        except BaseException:
            # e.g. Ray's fixed 30 s node start-up wait on an overloaded machine: the summary
            # run must not stay RUNNING (a resume reopens it)
            mlflow.MlflowClient().set_terminated(parent_id, "FAILED")
            raise
    try:
        # Where the grid ran, for the wall times the reproduction report prints.
        mlflow.MlflowClient().set_tag(parent_id, "fedsim.machine", _machine_description())
        # The trainable and the parameter server take a sliver each out of the trial's CPUs: a
        # placement group larger than the node would leave every trial PENDING forever.
        actor_cpus = plan.trial_cpus - 2 * HEAD_BUNDLE_CPUS
        per_actor = {"CPU": actor_cpus / plan.actors_per_trial}
        if plan.trial_gpus:
            per_actor["GPU"] = plan.trial_gpus / plan.actors_per_trial
        # bundle 0: the trainable (the federation's driver); bundle 1: the parameter server
        # (0 CPU, but every actor of a trial needs a bundle); then one bundle per client actor.
        bundles = [{"CPU": HEAD_BUNDLE_CPUS}, {"CPU": HEAD_BUNDLE_CPUS}] + [
            dict(per_actor) for _ in range(plan.actors_per_trial)
        ]
        context = {
            "spec": plan.spec,
            "base": plan.base,
            "overrides": plan.overrides,
            "experiment": plan.experiment,
            "parent_run_id": parent_id,
            "actor_cpus": actor_cpus,
            "actor_gpus": plan.trial_gpus,
            "clients_per_actor": plan.clients_per_actor,
            "actors_per_trial": plan.actors_per_trial,
        }
        trainable = tune.with_resources(
            tune.with_parameters(fedsim_trial, context=context), PlacementGroupFactory(bundles, strategy="PACK")
        )
        # Each grid point's keys become the trial's config, e.g. {"client_ratio": "2:1", "seed": 0}.
        param_space = {k: tune.grid_search(v) for k, v in plan.spec.grid.items()}
        if resume:
            tuner = tune.Tuner.restore(
                str(plan.storage), trainable=trainable, resume_errored=True, param_space=param_space
            )
        else:
            tuner = tune.Tuner(
                trainable,
                param_space=param_space,
                tune_config=tune.TuneConfig(max_concurrent_trials=max_concurrent),
                run_config=tune.RunConfig(
                    name=plan.storage.name,
                    storage_path=str(plan.storage.parent),
                    failure_config=tune.FailureConfig(max_failures=max_failures),
                    verbose=verbose,
                ),
            )
        try:
            results = tuner.fit()
        except BaseException as exc:
            mlflow.MlflowClient().set_terminated(parent_id, "FAILED")
            memory = out_of_memory_error(exc)
            if memory is not None:
                raise memory from exc
            raise
        finally:
            # A trial stopped by Ctrl-C (Tune ends the sweep gracefully) never closed its run.
            _mark_stale_children(parent_id)
        frame = _trial_frame(results, plan.spec.method)
        summary = summarise_grid(plan.spec, plan.dataset, frame)
        _log_summary(parent_id, plan, frame, summary)
        errors = [str(r.error) for r in results if r.error is not None]
        return {
            "parent_run_id": parent_id,
            "table": summary,
            "trials": frame,
            "errors": errors,
            "resumed": resume,
            "experiment": plan.experiment,
        }
    finally:
        if owned:
            ray.shutdown()


def out_of_memory_error(exc: BaseException) -> FedsimError | None:
    """The one-line error for a sweep that Ray's memory monitor ended, else None.

    When the monitor kills a trial's actor, Tune does not fail the trial: ``Tuner.fit`` raises a
    ``RuntimeError`` caused by Ray's ``OutOfMemoryError`` and the sweep ends with a traceback.
    The fix is the user's to make (fewer trials at once, nothing else beside the sweep), and the
    sweep resumes where it stopped, so it is a ``FedsimError``."""
    from ray.exceptions import OutOfMemoryError

    seen: BaseException | None = exc
    for _ in range(16):  # a cause chain is short; the bound guards against a cycle
        if seen is None:
            return None
        if isinstance(seen, OutOfMemoryError) or "running low on memory" in str(seen):
            said = "; ".join(line.strip() for line in str(seen).splitlines() if "memory" in line.lower())
            return FedsimError(
                f"the sweep stopped: Ray's memory monitor killed trial workers ({shorten(said or seen, 240)}); "
                "run fewer trials at once (--max-concurrent 1) and nothing else beside the sweep, then "
                "rerun the same command: finished trials are kept"
            )
        seen = seen.__cause__ or seen.__context__
    return None


def _machine_description() -> str:
    import platform

    import ray

    res = ray.cluster_resources()
    nodes = len([n for n in ray.nodes() if n.get("Alive")])
    gpus = int(res.get("GPU", 0))
    return (
        f"{nodes} node(s), {int(res.get('CPU', 0))} CPUs, {gpus} GPU(s)"
        f"{'' if gpus else ' (CPU only)'}; driver {platform.system()} {platform.machine()}"
    )


def _mark_stale_children(parent_id: str) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    parent = client.get_run(parent_id)
    for run in client.search_runs([parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"):
        if run.info.status == "RUNNING":
            client.set_terminated(run.info.run_id, "KILLED")


def _trial_frame(results: Any, method: str) -> pd.DataFrame:
    rows = []
    for r in results:
        m = r.metrics or {}
        if r.error is not None or "done_params" not in m:
            continue
        rows.append(
            {
                **json.loads(m["done_params"]),
                **{k: m[k] for k in (*score_keys(m, method), "sim_time", "wall_time_s", "mlflow_run_id") if k in m},
                "history": m["history"],
            }
        )
    return pd.DataFrame(rows)


def _log_summary(parent_id: str, plan: SweepPlan, frame: pd.DataFrame, table: pd.DataFrame) -> None:
    import mlflow

    client = mlflow.MlflowClient()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        table.to_parquet(d / "summary.parquet")
        frame.drop(columns=["history"], errors="ignore").to_parquet(d / "trials.parquet")
        (d / "summary.md").write_text(
            summary_markdown(plan.spec, plan.dataset, table) if not table.empty else "no finished trials\n"
        )
        write_plots(plan.spec, frame, d)
        for path in d.iterdir():
            client.log_artifact(parent_id, str(path))
    for _, r in table.iterrows():
        label = "_".join(str(r[k]).replace(":", "-") for k in plan.spec.table.keys)
        for m in plan.spec.table.metrics:
            client.log_metric(parent_id, f"{m}_mean_{label}"[:250], float(r[f"{m}_mean"]))
    client.set_terminated(parent_id, "FINISHED")
