"""Command line: ``fedsim run CONFIG [--set key=value ...] [--result-json FILE]``.

User errors print one line ``fedsim: error: ...`` and exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from fedsim.errors import FedsimError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedsim", description="Federated multi-modal clustering on Ray.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one experiment from a YAML config")
    run.add_argument("config", help="YAML config, e.g. configs/afmcc/bdgp.yaml")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config key (repeatable), e.g. --set mode=async --set afmcc.alpha=0.1")
    run.add_argument("--data-dir", help="folder holding the dataset files (searched first)")
    run.add_argument("--result-json", help="also write the result JSON to this file")
    sub.add_parser("datasets", help="list the dataset registry and where each file is looked for")
    return parser


def _run(args: argparse.Namespace) -> int:
    from fedsim.config import load_config

    overrides = list(args.overrides)
    if args.data_dir:
        overrides.append(f"data_dir={args.data_dir}")
    cfg = load_config(args.config, overrides)
    if args.result_json:
        target = Path(args.result_json)
        if target.parent and not target.parent.exists():
            raise FedsimError(f"--result-json: folder '{target.parent}' does not exist; create it or pick another path")

    from fedsim.runner import run_experiment

    result = run_experiment(cfg).summary
    print(
        f"\nfedsim: {cfg.method} on {cfg.dataset} ({cfg.num_clients} clients, {cfg.client_ratio}, {cfg.mode}, seed {cfg.seed})\n"
        f"  ACC {result['acc']:.4f}  NMI {result['nmi']:.4f}  ARI {result['ari']:.4f}  Purity {result['purity']:.4f}\n"
        f"  uploads {result['uploads']}, simulated time {result['simulated_time']:.4g}, wall time {result['wall_time']:.1f} s"
    )
    if result["mlflow_run_id"]:
        uri = result["mlflow_tracking_uri"]
        print(f"  MLflow run {result['mlflow_run_id']} in {uri}\n"
              f"    browse: mlflow ui --backend-store-uri {uri} --host 127.0.0.1   (or: make mlflow-ui)")
    if result["dashboard_url"]:
        print(f"  Ray dashboard (while Ray runs): {result['dashboard_url']}  (bearer token: ~/.ray/auth_token)")
    if args.result_json:
        Path(args.result_json).write_text(json.dumps(result, indent=2, default=float))
        print(f"  result JSON: {args.result_json}")
    return 0


def _datasets() -> int:
    from fedsim.data.datasets import DATASETS, search_paths

    print("search order: " + ", ".join(str(p) for p in search_paths(os.environ.get("FEDSIM_DATA_DIR"))))
    for name, spec in DATASETS.items():
        dims = list(spec.view_dims)
        print(f"  {name:24s} {spec.n_samples:6d} samples, {spec.n_clusters:3d} classes, views {dims}")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        return _datasets()
    except FedsimError as exc:
        print(f"fedsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fedsim: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
