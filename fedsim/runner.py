"""Run one experiment: validate everything, start Ray and the actors, federate, track, report.

All user-input checks (config, data file, partition, speed profile, privacy parameters) happen
before an MLflow run is opened or an actor is started, so bad input never leaves a half-written
run behind. Once the MLflow run is open it is always closed: FINISHED, FAILED or KILLED.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import ray
from ray.exceptions import GetTimeoutError

from fedsim.config import ExperimentConfig, method_config, ray_address_problem
from fedsim.errors import ConfigError, FedsimError, shorten, shorten_path
from fedsim.runtime.callbacks import Callback, CallbackList
from fedsim.runtime.cluster import ensure_ray, plan_placement, start_client_actors, stop_actors
from fedsim.runtime.federation_data import load_federation
from fedsim.runtime.orchestrator import Federation, FederationResult
from fedsim.runtime.resume import load_config as load_saved_config
from fedsim.runtime.resume import load_driver_state, save_config
from fedsim.runtime.server import make_server
from fedsim.runtime.speed import speed_multipliers
from fedsim.tracking import MLflowTracker, ProgressPrinter, check_tracking_uri, tracking_uri

if TYPE_CHECKING:
    from fedsim.privacy import PrivacyPlan


def validate(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every check that needs no Ray: returns facts about the federation for logging.

    Runs in the driver before Ray starts and before the MLflow run opens, so whatever it
    refuses leaves neither behind: the paths the run will use, the data and its partition, the
    speed profile, the privacy budget, and the method itself, built on the dataset's shapes
    (its model, and its ``check_run`` rules, e.g. CMMC's stages against ``rounds``)."""
    from fedsim.data.datasets import check_data

    check_data(cfg)  # headers and labels only: a bad file is refused in seconds, whatever its size
    _check_paths(cfg)
    dataset, specs = load_federation(cfg)
    speeds = speed_multipliers(cfg.speed_profile, cfg.num_clients, cfg.seed)
    _check_method(cfg)
    param_bytes, server_average = _rehearse_method(cfg, dataset.view_dims, dataset.n_clusters, [s.views for s in specs])
    privacy = None
    if cfg.privacy.enabled:  # every client's release bound and its noise (fedsim.privacy)
        from fedsim.privacy import plan_privacy

        privacy = plan_privacy(cfg, *_round_costs(cfg, dataset, specs), speeds)
    if cfg.task == "clustering" and cfg.evaluation == "fmcsc" and specs[0].indices.size < dataset.n_clusters:
        raise ConfigError(
            f"client 0 holds {specs[0].indices.size} samples, fewer than the {dataset.n_clusters} "
            "clusters k-means needs for the FMCSC evaluation; use fewer clients or evaluation=global_kmeans"
        )
    return {
        "dataset": dataset,
        "specs": specs,
        "speeds": speeds,
        "view_dims": dataset.view_dims,
        "n_clusters": dataset.n_clusters,
        "n_samples": dataset.n_samples,
        "client_kinds": "".join(s.kind for s in specs),
        "client_modalities": [list(s.views) for s in specs],
        "param_bytes": param_bytes,
        "server_average": server_average,
        "privacy": privacy,
    }


def _round_costs(cfg: ExperimentConfig, dataset: Any, specs: list[Any]) -> tuple[list[float], list[float]]:
    """Each client's round and pretraining-round cost (the virtual clock's work units), as its
    actor's ``describe`` will report them: the method's ``round_cost`` on the client's sample
    count and modalities (the samples themselves are not needed)."""
    import torch

    from fedsim.methods import get_method
    from fedsim.methods.base import LocalData

    method = get_method(cfg.method)(method_config(cfg), dataset.view_dims, dataset.n_clusters, cfg.num_clients)
    train, pretrain = [], []
    for cid, spec in enumerate(specs):
        data = LocalData(cid, {v: torch.empty(0) for v in spec.views}, dataset.labels[spec.indices], spec.indices)
        train.append(float(method.round_cost(data, cfg.num_clients)))
        pretrain.append(float(method.round_cost(data, 0)))
    return train, pretrain


def _check_paths(cfg: ExperimentConfig) -> None:
    """``data_dir`` is a folder; a local MLflow store can be created without creating folders."""
    if cfg.data_dir is not None:
        path = Path(cfg.data_dir).expanduser()
        shown = shorten_path(cfg.data_dir, 100)
        if not path.exists():
            raise ConfigError(
                f"data_dir '{shown}' does not exist; pass the folder that holds the dataset files "
                "(--data-dir or data_dir)"
            )
        if not path.is_dir():
            raise ConfigError(
                f"data_dir '{shown}' is a file, not a folder; pass the folder that holds the dataset "
                "files (--data-dir or data_dir)"
            )
    env_address = os.environ.get("RAY_ADDRESS")
    if cfg.runtime.ray_address is None and env_address:
        problem = ray_address_problem(env_address)
        if problem:
            raise ConfigError(f"$RAY_ADDRESS '{shorten(env_address, 60)}': {problem} (or unset it for a local Ray)")
    if cfg.tracking.enabled:
        check_tracking_uri(cfg)
    if cfg.runtime.checkpoint_dir is not None:
        _check_checkpoint_dir(cfg.runtime.checkpoint_dir)


def _check_checkpoint_dir(given: str) -> None:
    """The runs' checkpoint folder is a folder, or can be made in the nearest one that exists."""
    path = Path(given).expanduser()
    shown = shorten_path(given, 100)
    existing = next((p for p in [path, *path.parents] if p.exists()), None)
    if existing is None or not existing.is_dir():
        what = "is a file" if existing == path else f"lies under the file '{shorten_path(existing, 80)}'"
        raise ConfigError(
            f"runtime.checkpoint_dir '{shown}' {what}; name a folder (or null: no checkpoint, no --resume)"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(
            f"runtime.checkpoint_dir '{shown}': '{shorten_path(existing, 80)}' is not writable; pick "
            "another folder (or null: no checkpoint, no --resume)"
        )


def _rehearse_method(
    cfg: ExperimentConfig, view_dims: tuple[int, ...], n_clusters: int, client_modalities: list[tuple[int, ...]]
) -> int:
    """Build the method and its model in the driver, as every actor will: whatever the config
    cannot build fails here, as a ConfigError, not in an actor after Ray and MLflow started.
    Returns the model's parameter bytes (for the placement)."""
    from fedsim.methods import get_method

    method_cls = get_method(cfg.method)
    try:
        method = method_cls(method_config(cfg), view_dims, n_clusters, cfg.num_clients)
        _check_model_size(cfg, method)
        model = method.build_model(seed=0)
    except FedsimError:
        raise
    except (ValueError, TypeError, RuntimeError, MemoryError) as exc:
        raise ConfigError(
            f"{cfg.method} cannot build its model for views {list(view_dims)} from this config "
            f"({type(exc).__name__}: {shorten(str(exc), 80)}); check the {cfg.method}.* widths"
        ) from None
    empty = [name for name, p in model.named_parameters() if p.numel() == 0]
    if empty:
        raise ConfigError(
            f"{cfg.method}'s model has a layer of width 0 ({shorten(empty[0], 40)}); every width in "
            f"{cfg.method}.* must be >= 1"
        )
    # A method's rules on the whole run (e.g. CMMC's stages against ``rounds``, FMCSC's view
    # pattern for every client).
    try:
        method.check_run(cfg.rounds, [tuple(m) for m in client_modalities])
    except ValueError as exc:
        raise ConfigError(f"{cfg.method}: {shorten(str(exc), 200)}") from None
    return 4 * sum(p.numel() for p in model.parameters()), method.server_average(model)


def _check_model_size(cfg: ExperimentConfig, method: Any) -> None:
    """The model fits in memory, counted before it is built: on torch's meta device (shapes,
    no storage), so ``afmcc.hidden=[100000000]`` is one line, not gigabytes allocated. A client
    keeps at least four copies (weights, gradients, Adam's two moments): those must fit in this
    machine's memory, where the driver and the actors build it."""
    import psutil
    import torch

    try:
        with torch.device("meta"):
            count = sum(p.numel() for p in method.build_model(seed=0).parameters())
    except Exception:  # noqa: BLE001 - a method that cannot build on meta: the real build judges
        return
    need, total = 4 * 4 * count, psutil.virtual_memory().total
    if need > total:
        raise ConfigError(
            f"{cfg.method}'s model has {count:,} parameters: a client needs {need / 2**30:,.1f} GiB for "
            f"it (weights, gradients, Adam), more than this machine's {total / 2**30:,.0f} GiB; lower "
            f"the {cfg.method}.* widths"
        )


def _client_nodes(described: dict[int, dict[str, Any]]) -> dict[str, list[int]]:
    nodes: dict[str, list[int]] = {}
    for cid in sorted(described):
        nodes.setdefault(str(described[cid]["node_id"]), []).append(cid)
    return nodes


def _check_method(cfg: ExperimentConfig) -> None:
    """The method can do what the config asks of it (its ``Learner.validate``: task, model
    selection, its own rules)."""
    from fedsim.methods import get_method

    get_method(cfg.method).validate(cfg)


@dataclass
class RunOutcome:
    summary: dict[str, Any]  # the result JSON
    federation: FederationResult  # histories, upload log, assignments


def run_experiment(
    cfg: ExperimentConfig, callbacks: list[Callback] | None = None, resume: str | None = None
) -> RunOutcome:
    """Run ``cfg`` end to end: the result JSON and the federation's full record.

    ``resume``: the id of a run of the same config whose driver died (its MLflow run id, or the
    run tag it printed without tracking): the run continues from its checkpoint, in the same
    MLflow run; in virtual mode it ends exactly as an uninterrupted run."""
    if resume is not None:
        _check_resumable(cfg, resume)
    facts = validate(cfg)
    dataset, specs, speeds = facts.pop("dataset"), facts.pop("specs"), facts.pop("speeds")
    privacy = facts.pop("privacy")
    shard_bytes = int(sum(v.nbytes for v in dataset.views) / max(cfg.num_clients, 1))
    del dataset

    all_callbacks: list[Callback] = list(callbacks or [])
    if cfg.tracking.progress:
        all_callbacks.append(ProgressPrinter())
    tracker = MLflowTracker(cfg) if cfg.tracking.enabled else None
    if tracker is not None:
        all_callbacks.insert(0, tracker)
    callback = CallbackList(all_callbacks)

    ray_info = ensure_ray(cfg)
    if tracker is not None:
        run_id: str | None = tracker.start() if resume is None else tracker.resume(resume)
    else:
        run_id = None
    started = time.perf_counter()
    run_tag = run_id or resume or uuid.uuid4().hex[:12]  # tags this run's live Ray metrics and its checkpoint
    try:
        selection = cfg.model_selection
        restarts: list[dict[str, Any]] = []
        best: tuple[float, FederationResult, dict[str, Any]] | None = None
        releases = np.zeros(cfg.num_clients, dtype=int)  # uploads per client, every restart
        capped: set[int] = set()
        for restart in range(selection.runs):
            run_cfg = cfg if restart == 0 else cfg.model_copy(update={"restart": restart})
            if selection.runs > 1:
                callback.on_restart(restart, selection.runs)
            result, info = _federate(
                run_cfg, specs, speeds, facts, shard_bytes, run_tag, ray_info, callback, resume is not None, privacy
            )
            if len(result.upload_log):
                releases += np.bincount(result.upload_log["client_id"], minlength=cfg.num_clients)
            capped.update(result.privacy_capped)
            restarts.append({"restart": restart, **result.metrics, "wall_time": result.wall_time})
            score = _selection_score(result.metrics, selection.criterion) if selection.runs > 1 else 0.0
            if best is None or score < best[0]:
                best = (score, result, info)
        assert best is not None
        _, result, info = best
        if selection.runs > 1 or "selection_loss" in result.metrics:
            # also for one restart (both criteria keep it): a grid's derived rows then read the
            # same metrics whatever EXTRA="model_selection.runs=..." a sweep was given
            result.metrics.update(selected_by(restarts))
        wall = time.perf_counter() - started
        out = _result_json(cfg, result, wall, run_id, ray_info, info)
        if privacy is not None:
            out["privacy"] = privacy.account(releases.tolist(), sorted(capped))
        if selection.runs > 1:
            out["model_selection"] = {
                "runs": selection.runs,
                "criterion": selection.criterion,
                "uses_labels": selection.criterion == "acc",
                "restarts": restarts,
                "chosen": int(info["restart"]),
            }
        if tracker is not None:
            if "privacy" in out:
                tracker.log_privacy(out["privacy"])
            tracker.log_result(out)
        callback.on_run_end(result)
        folder = _checkpoint_folder(cfg, run_tag)
        if folder is not None:  # a finished run needs no checkpoint
            shutil.rmtree(folder, ignore_errors=True)
        return RunOutcome(out, result)
    except BaseException as exc:
        callback.on_run_failed(exc)
        raise
    finally:
        if ray_info["owned"]:
            ray.shutdown()


def _federate(
    cfg: ExperimentConfig,
    specs: list[Any],
    speeds: np.ndarray,
    facts: dict[str, Any],
    shard_bytes: int,
    run_tag: str,
    ray_info: dict[str, Any],
    callback: Callback,
    resume: bool = False,
    privacy: PrivacyPlan | None = None,
) -> tuple[FederationResult, dict[str, Any]]:
    """One federation from fresh actors: a parameter server, the client actors, the run (from
    its checkpoint when ``resume``; one killed before its first driver checkpoint starts over)."""
    folder = _checkpoint_folder(cfg, run_tag)
    state = load_driver_state(folder) if resume and folder is not None else None
    if folder is not None:
        if state is None:  # a fresh start: no server state from an earlier try
            shutil.rmtree(folder, ignore_errors=True)
        save_config(folder, _resume_key(cfg))
    server: Any = None
    actors: list[Any] = []
    placement = None
    try:
        # Everything Ray-side is created inside the try: an interruption half-way through
        # start-up must not leave actors holding CPUs, or the next run's actors pend forever.
        server = make_server(
            [s.views for s in specs],
            run_tag,
            [int(s.indices.size) for s in specs],
            restart=cfg.restart,
            checkpoint_dir=_checkpoint_folder(cfg, run_tag),
            max_restarts=cfg.runtime.max_actor_restarts,
            server_average=facts["server_average"],
        )
        placement = plan_placement(cfg, facts["param_bytes"], shard_bytes)
        actor_of = start_client_actors(cfg, placement, run_tag, created=actors)
        described: dict[int, dict[str, Any]] = {}
        try:
            parts = ray.get([a.describe.remote() for a in actors], timeout=cfg.runtime.start_timeout_s)
        except GetTimeoutError:
            free = _cpu_gpu(ray.available_resources())
            raise ConfigError(
                f"the {len(actors)} client actors ({placement.num_cpus:g} CPUs, {placement.num_gpus:g} GPUs each) were "
                f"not running after {cfg.runtime.start_timeout_s:g} s (runtime.start_timeout_s); Ray has "
                f"{free or 'no CPU or GPU'} free of {_cpu_gpu(ray.cluster_resources())}: lower "
                "runtime.num_cpus/num_gpus or free the cluster (`ray status`)"
            ) from None
        for part in parts:
            described.update(part)
        if privacy is not None:  # the release bounds were derived from these costs
            costs = [(described[c]["round_cost"], described[c]["pretrain_cost"]) for c in range(cfg.num_clients)]
            if costs != list(zip(privacy.bounds.round_costs, privacy.bounds.pretrain_costs)):
                raise RuntimeError("the client actors report other round costs than the driver's privacy plan used")
        info = {
            "n_samples": facts["n_samples"],
            "n_clusters": facts["n_clusters"],
            "view_dims": list(facts["view_dims"]),
            "client_kinds": facts["client_kinds"],
            "client_modalities": facts["client_modalities"],
            "speeds": [round(float(s), 4) for s in speeds],
            "actors": len(actors),
            "clients_per_actor": max(len(g) for g in placement.groups),
            "num_cpus_per_actor": round(placement.num_cpus, 4),
            "num_gpus_per_actor": round(placement.num_gpus, 4),
            "num_parameters": described[0]["num_parameters"],
            # where the clients run: Ray node id -> its client ids (a cluster spreads the actors)
            "client_nodes": _client_nodes(described),
            "run_tag": run_tag,
            "dashboard_url": ray_info.get("dashboard_url"),
            "restart": cfg.restart,
        }
        if cfg.restart == 0:
            callback.on_run_start(info)
        federation = Federation(
            cfg,
            server,
            actor_of,
            described,
            speeds,
            facts["n_clusters"],
            callback,
            checkpoint_folder=folder if cfg.mode == "virtual" else None,
            resume=state,
            privacy=privacy,
        )
        return federation.run(), info
    finally:
        # Wait for the CPUs to be free again only where the next run plans from what is free: a
        # sweep trial names its CPUs and its actors give them back to its placement group, which
        # the cluster-wide report never shows.
        held = placement.num_cpus * len(actors) if placement is not None and cfg.runtime.num_cpus is None else 0.0
        stop_actors([*actors, *([server] if server is not None else [])], held_cpus=held)


def _resume_key(cfg: ExperimentConfig) -> dict[str, Any]:
    """What must not change between a run and its resumption: everything that shapes the result
    (not tracking, timeouts, ports or where Ray runs)."""
    data = cfg.model_dump(mode="json")
    data.pop("tracking")
    data["runtime"] = {"torch_threads": cfg.runtime.torch_threads, "checkpoint_dir": cfg.runtime.checkpoint_dir}
    return data


def _check_resumable(cfg: ExperimentConfig, run: str) -> None:
    """Refuse, before Ray starts, a resumption that cannot continue the run it names."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", run):
        raise ConfigError(
            f"--resume '{shorten(run, 40)}' is not a run id; give the MLflow run id (32 hex digits) or "
            "the run tag a run printed"
        )
    if cfg.mode != "virtual":
        raise ConfigError(
            f"--resume continues virtual-mode runs; this config has mode={cfg.mode} (rerun it without --resume)"
        )
    if cfg.model_selection.runs > 1:
        raise ConfigError("--resume continues runs with model_selection.runs=1; rerun this one without --resume")
    folder = _checkpoint_folder(cfg, run)
    if folder is None:
        raise ConfigError("--resume needs runtime.checkpoint_dir (the run's checkpoint); it is null here")
    saved = load_saved_config(folder)
    if saved is None:
        raise ConfigError(
            f"no checkpoint of run '{shorten(run, 40)}' in {shorten_path(folder, 100)} (finished runs "
            "keep none); check the run id and runtime.checkpoint_dir"
        )
    if saved != _resume_key(cfg):
        changed = sorted(k for k in set(saved) | set(_resume_key(cfg)) if saved.get(k) != _resume_key(cfg).get(k))
        raise ConfigError(
            f"run '{shorten(run, 40)}' was started with another config (differs in: "
            f"{shorten(', '.join(changed), 120)}); resume it with the config it was started with"
        )


def _checkpoint_folder(cfg: ExperimentConfig, run_tag: str) -> str | None:
    """``<runtime.checkpoint_dir>/<run>/`` (``r<k>`` inside it for model-selection restart k)."""
    if cfg.runtime.checkpoint_dir is None:
        return None
    folder = Path(cfg.runtime.checkpoint_dir).expanduser().resolve() / run_tag
    return str(folder / f"r{cfg.restart}" if cfg.restart else folder)


def _cpu_gpu(resources: dict[str, float]) -> dict[str, float]:
    return {k: round(v, 3) for k, v in resources.items() if k in ("CPU", "GPU")}


def _selection_score(metrics: dict[str, float], criterion: str) -> float:
    """Lower is better: the method's label-free selection loss, or minus ACC (uses labels)."""
    if criterion == "acc":
        return -float(metrics.get("acc", metrics.get("accuracy", float("nan"))))
    return float(metrics["selection_loss"])  # _check_method made sure the method has one


def selected_by(restarts: list[dict[str, Any]]) -> dict[str, float]:
    """The restart each selection criterion keeps, from one set of restarts: its metrics as
    ``selected_by_<criterion>/<metric>`` (and ``.../restart``). One trial then serves both the
    label-free choice and the papers' label-using one (MSDIB/GIB Table 1 rows), at half the cost
    of training the same restarts twice; ``loss`` only when every restart has a selection loss."""
    criteria = ["acc"] + (["loss"] if all("selection_loss" in r for r in restarts) else [])
    out: dict[str, float] = {}
    for criterion in criteria:
        scores = [_selection_score(r, criterion) for r in restarts]
        kept = restarts[int(np.argmin(scores))]  # first of equal scores, as the restart loop keeps
        for key, value in kept.items():
            if key != "wall_time" and isinstance(value, (int, float)) and not isinstance(value, bool):
                out[f"selected_by_{criterion}/{key}"] = float(value)
    return out


def _result_json(
    cfg: ExperimentConfig,
    result: FederationResult,
    wall: float,
    run_id: str | None,
    ray_info: dict[str, Any],
    info: dict[str, Any],
) -> dict[str, Any]:
    log = result.upload_log
    train = log[log["phase"] == "train"] if len(log) else log
    return {
        **{k: float(v) for k, v in result.metrics.items()},
        "method": cfg.method,
        "dataset": cfg.dataset,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "num_clients": cfg.num_clients,
        "client_ratio": cfg.client_ratio,
        "rounds": {str(c): int(r) for c, r in enumerate(result.rounds_done)},
        "simulated_time": float(result.sim_time),
        "wall_time": float(wall),
        "federation_wall_time": float(result.wall_time),
        "uploads": int(len(train)),
        "mean_staleness": float(np.mean(train["staleness"])) if len(train) else 0.0,
        "actor_restarts": int(result.restarts),
        "server_restarts": int(result.server_restarts),
        "history": [
            {"uploads": h.uploads, "sim_time": h.sim_time, "wall_time": h.wall_time, **h.metrics}
            for h in result.history
        ],
        "mlflow_run_id": run_id,
        "mlflow_tracking_uri": tracking_uri(cfg) if run_id else None,
        "dashboard_url": ray_info.get("dashboard_url"),
        "federation": info,
    }
