"""Soak: a long run of a small config, watching the memory of the driver and of every actor:

    .venv/bin/python bench/bench_soak.py                    # 300 rounds, bound 5 % after round 50
    .venv/bin/python bench/bench_soak.py --rounds 100 --warmup 20 --no-tracking

Tiny synthetic data, 4 clients, virtual mode, an evaluation every 10 rounds, MLflow tracking to a
temporary store and the server's checkpoint in a temporary folder (what a default run does).
Every ``--every`` rounds (all clients' r-th uploads committed) it samples the resident set size
(RSS, psutil) of the driver and of each actor process (client actors and the parameter server,
their PIDs asked from the actors themselves), and USS (memory private to the process) beside it.
The growth is (RSS at the last round - RSS at round ``--warmup``) / RSS at round ``--warmup``,
for each process and for all of them together. Prints one JSON line and exits 1 when any of them
grew by more than ``--bound`` percent. Not a unit test: it takes minutes, and its time depends on
the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.runtime.callbacks import Callback  # noqa: E402 - after the path: runs from a checkout

MB = 1024 * 1024


def _memory(pid: int) -> tuple[int, int] | None:
    """(RSS, USS) in bytes of process ``pid``, or None if it is gone."""
    import psutil

    try:
        info = psutil.Process(pid).memory_full_info()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return None
    return int(info.rss), int(info.uss)


class MemorySampler(Callback):
    """A run callback: at every ``every``-th round (and at ``warmup``) the RSS and USS of the
    driver and of every actor of the run, keyed by process name (``driver``, the actor names)."""

    def __init__(self, num_clients: int, every: int, warmup: int) -> None:
        self.u = num_clients
        self.every = every
        self.warmup = warmup
        self.samples: list[dict[str, Any]] = []
        self.pids: dict[str, int] = {}
        self._prefix = ""

    def _resolve_pids(self) -> None:
        import ray

        for name in sorted(n for n in ray.util.list_named_actors() if n.startswith(self._prefix + "/")):
            handle = ray.get_actor(name)
            self.pids[name[len(self._prefix) + 1 :]] = ray.get(
                handle.__ray_call__.remote(lambda self: os.getpid()), timeout=60
            )

    def on_run_start(self, info: dict[str, Any]) -> None:
        self._prefix = info["run_tag"]
        self.pids = {"driver": os.getpid()}
        self._resolve_pids()

    def on_upload(self, record: Any, progress: Any) -> None:
        if record.phase != "train" or progress.uploads % self.u:
            return
        round_ = progress.uploads // self.u
        if round_ % self.every and round_ != self.warmup:
            return
        sample: dict[str, Any] = {"round": round_, "wall_s": progress.wall_time, "rss": {}, "uss": {}}
        for name, pid in self.pids.items():
            memory = _memory(pid)
            if memory is None:  # an actor restarted: ask again
                self._resolve_pids()
                memory = _memory(self.pids[name])
            if memory is not None:
                sample["rss"][name], sample["uss"][name] = memory
        self.samples.append(sample)


def _growth(before: dict[str, int], after: dict[str, int]) -> dict[str, float]:
    out = {name: 100.0 * (after[name] - before[name]) / before[name] for name in before if name in after}
    out["total"] = 100.0 * (sum(after.values()) - sum(before.values())) / sum(before.values())
    return out


def main() -> int:
    import ray

    from fedsim.config import build_config
    from fedsim.runner import run_experiment
    from tests.conftest import SMALL_SYNTHETIC

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=50, help="the round growth is measured from")
    parser.add_argument("--every", type=int, default=10, help="sample every this many rounds")
    parser.add_argument("--bound", type=float, default=5.0, help="largest RSS growth allowed, percent")
    parser.add_argument("--no-tracking", action="store_true", help="no MLflow run")
    args = parser.parse_args()
    if not 0 < args.warmup < args.rounds or args.rounds % args.every:
        parser.error("need 0 < --warmup < --rounds, and --rounds a multiple of --every")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    with tempfile.TemporaryDirectory(prefix="fedsim-soak-") as tmp:
        cfg = build_config(
            {**SMALL_SYNTHETIC, "runtime": {"round_timeout_s": 600, "checkpoint_dir": f"{tmp}/runs"}},
            [
                f"rounds={args.rounds}",
                "eval_every=10",
                f"tracking.enabled={str(not args.no_tracking).lower()}",
                f"tracking.tracking_uri=sqlite:///{tmp}/mlflow.db",
            ],
        )
        sampler = MemorySampler(cfg.num_clients, args.every, args.warmup)
        began = time.perf_counter()
        outcome = run_experiment(cfg, callbacks=[sampler])
        wall = time.perf_counter() - began
    ray.shutdown()
    by_round = {s["round"]: s for s in sampler.samples}
    base, last = by_round[args.warmup], by_round[args.rounds]
    growth = _growth(base["rss"], last["rss"])
    after_warmup = [s for s in sampler.samples if s["round"] >= args.warmup]
    peak = _growth(base["rss"], {k: max(s["rss"].get(k, 0) for s in after_warmup) for k in base["rss"]})
    out = {
        "rounds": args.rounds,
        "clients": cfg.num_clients,
        "uploads": outcome.summary["uploads"],
        "warmup_round": args.warmup,
        "wall_s": round(wall, 1),
        "processes": len(base["rss"]),
        "rss_mb_at_warmup": {k: round(v / MB, 1) for k, v in base["rss"].items()},
        "rss_mb_at_end": {k: round(v / MB, 1) for k, v in last["rss"].items()},
        "rss_growth_pct": {k: round(v, 2) for k, v in growth.items()},
        "rss_peak_growth_pct": {k: round(v, 2) for k, v in peak.items()},
        "uss_growth_pct": {k: round(v, 2) for k, v in _growth(base["uss"], last["uss"]).items()},
        "rss_mb_total_by_round": {s["round"]: round(sum(s["rss"].values()) / MB, 1) for s in sampler.samples},
        "bound_pct": args.bound,
        "acc": outcome.summary["acc"],
    }
    worst = max(growth.values())
    out["max_rss_growth_pct"] = round(worst, 2)
    out["ok"] = worst <= args.bound
    print(json.dumps(out), flush=True)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
