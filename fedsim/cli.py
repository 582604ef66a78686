"""Command line: ``fedsim run CONFIG [--set key=value ...] [--result-json FILE]``.

User errors print one line ``fedsim: error: ...`` and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from fedsim.errors import FedsimError, shorten, shorten_path

MAX_MESSAGE = 1000  # a message is one line; no user value may make it longer than this


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated multi-modal clustering on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a YAML config")
    run.add_argument("config", help="YAML config, e.g. configs/afmcc/bdgp.yaml")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key (repeatable), e.g. --set mode=async --set afmcc.alpha=0.1",
    )
    run.add_argument("--data-dir", help="folder holding the dataset files (searched first)")
    run.add_argument("--result-json", help="also write the result JSON to this file")
    run.add_argument(
        "--resume",
        metavar="RUN_ID",
        help="continue a run whose driver died from its checkpoint (the same config; virtual mode)",
    )
    datasets = sub.add_parser(
        "datasets",
        help="list the dataset registry, where each file was found and the other "
        "data files; `datasets inspect FILE` shows what a data file holds",
    )
    datasets.add_argument("--data-dir", help="folder searched first (its data files are listed too)")
    datasets_sub = datasets.add_subparsers(dest="datasets_action")
    inspect = datasets_sub.add_parser(
        "inspect",
        help="views (shape, dtype, range, sparsity, NaN/inf), labels "
        "(classes, counts), the preprocessing that would apply",
    )
    inspect.add_argument(
        "file",
        help="a .mat/.npz/.h5/.hdf5 file, a folder of per-view .csv/.parquet files "
        "(plus labels.csv), or a registry name",
    )
    inspect.add_argument("--data-dir", default=argparse.SUPPRESS, help="folder searched first")
    inspect.add_argument(
        "--preprocessing",
        choices=["none", "minmax", "standard", "scale255"],
        help="as the config key preprocessing (default: the dataset's own)",
    )
    inspect.add_argument("--n-clusters", type=int, help="as the config key n_clusters (needed without labels)")
    sweep = sub.add_parser("sweep", help="run a paper grid on Ray Tune (tune/grids/<method>/<grid>.yaml)")
    sweep.add_argument("--method", default="afmcc")
    sweep.add_argument("--dataset", required=True)
    sweep.add_argument("--grid", default=None, help="grid name (default: the method's main table, table2)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override applied to every trial",
    )
    sweep.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="AXIS=V1[,V2]",
        help="run only these values of a grid axis (repeatable), e.g. --only client_ratio=1:1",
    )
    sweep.add_argument(
        "--trial-cpus",
        type=float,
        default=None,
        help="CPUs reserved per trial (default: runtime.torch_threads per client, at most all)",
    )
    sweep.add_argument("--trial-gpus", type=float, default=0.0, help="GPUs reserved per trial")
    sweep.add_argument("--max-failures", type=int, default=1, help="retries per failed trial")
    sweep.add_argument("--max-concurrent", type=int, default=None)
    sweep.add_argument("--fresh", action="store_true", help="start over instead of resuming an interrupted sweep")
    sweep.add_argument("--storage", default="results/sweeps", help="where Tune keeps the sweep's state")
    report = sub.add_parser("report", help="write reports/REPRODUCTION.md (papers' tables beside ours) from MLflow")
    report.add_argument("--out", default="reports", help="folder for REPRODUCTION.md and its plots")
    report.add_argument(
        "--tracking-uri",
        default=None,
        help="MLflow store whose sweeps are archived first (default: $MLFLOW_TRACKING_URI, else "
        "sqlite:///mlflow.db; skipped when that store does not exist)",
    )
    report.add_argument("--archive", default=None, help="the sweep archive (default: <out>/runs)")
    report.add_argument("--data-dir", help="folder holding dataset files (to tell runnable from unavailable datasets)")
    archive = sub.add_parser("archive", help="move sweep runs between an MLflow store and the archive (reports/runs)")
    archive.add_argument(
        "action",
        choices=["export", "import"],
        help="export: the store's sweeps into the archive; import: the archive into the store",
    )
    archive.add_argument(
        "--tracking-uri", default=None, help="MLflow store (default: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db)"
    )
    archive.add_argument("--archive", default="reports/runs", help="the archive folder (default: reports/runs)")
    return parser


def _store_uri(given: str | None, must_exist: bool) -> str | None:
    """The MLflow store named on the command line or by the environment; a sqlite store that does
    not exist is None (or an error when ``must_exist``)."""
    from fedsim.tracking import DEFAULT_TRACKING_URI

    uri = given or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith("sqlite:///"):
        db = Path(uri.removeprefix("sqlite:///"))
        if not db.is_file():
            if must_exist:
                raise FedsimError(
                    f"no MLflow store at {db}; run a sweep first (make sweep DATASET=bdgp) or pass --tracking-uri"
                )
            return None
        uri = "sqlite:///" + str(db.resolve())
    return uri


def _report(args: argparse.Namespace) -> int:
    from fedsim.report import build_report

    from fedsim.tracking import DEFAULT_TRACKING_URI

    uri = _store_uri(args.tracking_uri, must_exist=args.tracking_uri is not None)
    # The report itself is an MLflow run too, in the store named (created if absent).
    log_to = uri or args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    try:
        path, exported, archived = build_report(uri, args.out, args.data_dir, args.archive, log_to=log_to)
    except ValueError as exc:  # a damaged archive line
        raise FedsimError(str(exc)) from None
    source = f"{exported} sweep runs exported from {uri}; " if uri else "no local MLflow store; "
    print(
        f"fedsim: wrote {path} and {len(list(path.parent.glob('*.png')))} plots "
        f"({source}{archived} runs in the archive); the report, its plots and tables (CSV) are MLflow run "
        f"'reproduction-report' of experiment fedsim-report in {log_to}"
    )
    return 0


def _archive(args: argparse.Namespace) -> int:
    from fedsim.sweeps.archive import export_sweeps, import_archive, read_archive

    if args.action == "export":
        uri = _store_uri(args.tracking_uri, must_exist=True)
        print(f"fedsim: exported {export_sweeps(uri, args.archive)} sweep runs from {uri} into {args.archive}")
        return 0
    from fedsim.tracking import DEFAULT_TRACKING_URI

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI  # created if absent
    try:
        records = read_archive(args.archive)
    except ValueError as exc:
        raise FedsimError(str(exc)) from None
    print(f"fedsim: imported {import_archive(records, uri)} of {len(records)} archived runs into {uri}")
    return 0


def _check_writable(path: str, option: str) -> None:
    """``path`` can be written as a file now, before a run that may take hours: it is not a
    folder, its folder exists and takes a new file. Leaves no file behind."""
    target = Path(path).expanduser()
    shown = shorten_path(path, 100)
    if target.is_dir():
        raise FedsimError(
            f"{option} '{shown}' is a folder; name a file in it, such as {shorten_path(target / 'result.json', 80)}"
        )
    folder = target.parent
    if not folder.exists():
        raise FedsimError(
            f"{option}: folder '{shorten_path(folder, 100)}' does not exist; create it or pick another path"
        )
    if not folder.is_dir():
        raise FedsimError(f"{option}: '{shorten_path(folder, 100)}' is a file, not a folder; pick another path")
    try:
        if target.exists():
            with open(target, "a"):
                pass
        else:
            with open(target, "x"):
                pass
            target.unlink()
    except OSError as exc:
        raise FedsimError(
            f"{option} '{shown}' cannot be written ({shorten(exc.strerror or exc, 60)}); pick a writable path"
        ) from None


def _run(args: argparse.Namespace) -> int:
    from fedsim.config import load_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    from fedsim.data.datasets import check_data

    check_data(cfg)  # before the heavy imports: a bad data file answers in seconds
    if args.result_json:
        _check_writable(args.result_json, "--result-json")

    from fedsim.runner import run_experiment

    result = run_experiment(cfg, resume=args.resume).summary
    if cfg.task == "classification":
        scores = f"  accuracy {result['accuracy']:.4f}  macro-F1 {result['macro_f1']:.4f}  UAR {result['uar']:.4f}\n"
    elif "acc" in result and result["acc"] == result["acc"]:  # NaN without labels
        scores = f"  ACC {result['acc']:.4f}  NMI {result['nmi']:.4f}  ARI {result['ari']:.4f}  Purity {result['purity']:.4f}\n"
    else:  # unlabelled data: only label-free scores
        scores = (
            "  "
            + "  ".join(
                f"{k} {result[k]:.4f}"
                for k in ("clusters_found", "largest_cluster_share", "cluster_balance")
                if k in result
            )
            + "  (no labels: no ACC/NMI/ARI)\n"
        )
    selection = result.get("model_selection")
    if selection:
        scores += (
            f"  model selection: restart {selection['chosen']} of {selection['runs']} by "
            f"{'ACC (uses labels)' if selection['uses_labels'] else 'selection loss (label-free)'}\n"
        )
    print(
        f"\nfedsim: {cfg.method} on {cfg.dataset} ({cfg.num_clients} clients, {cfg.client_ratio}, {cfg.mode}, seed {cfg.seed})\n"
        + scores
        + f"  uploads {result['uploads']}, simulated time {result['simulated_time']:.4g}, wall time {result['wall_time']:.1f} s"
    )
    if result["mlflow_run_id"]:
        uri = result["mlflow_tracking_uri"]
        print(
            f"  MLflow run {result['mlflow_run_id']} in {uri}\n"
            f"    browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (or: make mlflow-ui)"
        )
    if result["dashboard_url"]:
        print(
            f"  Ray dashboard (while the run's Ray is up; set RAY_ADDRESS to keep a cluster): {result['dashboard_url']}"
            "  (bearer token: ~/.ray/auth_token)"
        )
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(result, indent=2, default=float))
        print(f"  result JSON: {args.result_json}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import time

    from fedsim.sweeps.results import summary_markdown
    from fedsim.sweeps.tune_runner import plan_sweep, run_sweep

    started = time.perf_counter()
    plan = plan_sweep(
        args.method,
        args.dataset,
        args.grid or "table2",
        args.overrides,
        trial_cpus=args.trial_cpus,
        trial_gpus=args.trial_gpus,
        storage=args.storage,
        only=args.only,
    )
    print(
        f"fedsim sweep: {plan.spec.reproduces} on {plan.dataset}: {len(plan.spec.trials)} trials, "
        f"{plan.actors_per_trial} actors x {plan.trial_cpus / plan.actors_per_trial:g} CPU per trial; "
        f"state in {plan.storage}",
        flush=True,
    )
    out = run_sweep(plan, max_failures=args.max_failures, fresh=args.fresh, max_concurrent=args.max_concurrent)
    table = out["table"]
    print("\n" + (summary_markdown(plan.spec, plan.dataset, table) if not table.empty else "no trial finished"))
    print(
        f"MLflow experiment '{out['experiment']}', summary run {out['parent_run_id']}"
        f"{' (resumed)' if out['resumed'] else ''}; wall time {time.perf_counter() - started:.0f} s"
    )
    if out["errors"]:
        print(f"{len(out['errors'])} trial(s) failed after retries:", *out["errors"], sep="\n  ", file=sys.stderr)
        return 1
    return 0


def _datasets(args: argparse.Namespace) -> int:
    # fedsim.data.inspect imports neither torch nor Ray: this answers in about a second.
    from fedsim.data.inspect import describe_search, inspect_dataset

    if getattr(args, "datasets_action", None) == "inspect":
        lines, problems = inspect_dataset(args.file, args.data_dir, args.preprocessing, args.n_clusters)
        print("\n".join(lines))
        if problems:
            print(f"fedsim: error: {args.file} would be refused: {problems[0]}", file=sys.stderr)
            return 2
        return 0
    print("\n".join(describe_search(args.data_dir)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    # Opacus' accountant warns that its tightest order is its largest one whenever the budget is
    # tiny: a note on its search, printed on stderr beside the one error line fedsim gives.
    warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "sweep":
            return _sweep(args)
        if args.command == "report":
            return _report(args)
        if args.command == "archive":
            return _archive(args)
        return _datasets(args)
    except FedsimError as exc:
        message = " ".join(str(exc).split())  # one line, whatever a value held
        if len(message) > MAX_MESSAGE:
            message = f"{message[: MAX_MESSAGE // 2]} ... {message[-MAX_MESSAGE // 2 + 5 :]}"
        print(f"fedsim: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
