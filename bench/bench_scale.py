"""Scale: memory and time per round against the number of simulated clients.

    .venv/bin/python bench/bench_scale.py                          # 100 and 1,000 BDGP-sized clients
    .venv/bin/python bench/bench_scale.py --clients 100 1000 --peers 8 --resident 2
    .venv/bin/python bench/bench_scale.py --model small --clients 10000

Each point is one AFMCC run in virtual mode (the bit-for-bit clock) on synthetic data shaped like
BDGP (views of 1750 and 79 features, 5 clusters, ``--samples`` samples per client), with the
BDGP model (``--model bdgp``: AFMCC's default widths, 2.15 M parameters, 8.6 MB a model) or a
small one (``--model small``: widths 64-32 on views of 20, 30 and 40 features). It uses what makes
a large federation fit a small machine:

- ``afmcc.peers``: Eq. 6 over the client's own and the ``--peers`` most recent other uploads,
  not every client's (at 1,000 BDGP clients every model is 8.6 GB a round);
- ``runtime.resident_clients``: an actor keeps ``--resident`` models live and rebuilds the
  others for their round from the state kept with their last upload;
- ``runtime.rounds_in_flight``: the driver hands ``--in-flight`` rounds ahead to the actors,
  not all 1,000 of the clients that start at time 0 (each round in flight holds a model);
- Ray's object store capped at ``--object-store-gib``: the store of models and optimiser states
  (1,000 x 26 MB) spills to disk, and a round reads back what it needs.

Pretraining is one designated round (Alg. 1 as printed; the lineage's chain through 1,000
clients would be the run), there is no checkpoint and no MLflow run, and the evaluation is the
final FMCSC one. Memory is the peak of the summed PSS of the bench process and every process it
started (``MemoryWatch``): Ray's own processes, the actors and the object store's shared memory
are in it, the pages of objects spilled to disk are not. Time per round is the training phase's wall time
divided by the rounds (every client once per round). Prints one JSON line per point and a
Markdown table. Not a unit test: a 1,000-client point takes many minutes on 2 cores.

Measured on the 2-core, 24 GiB development machine (2026-12-07), defaults (8 peers, 2 resident
models per actor, 4 rounds in flight, 2 actors, a 2 GiB object store), one round per client,
beside one 1-CPU sweep trial (GIB) except the small 100/1,000 points:

| clients | model | peak memory (GiB) | memory per client (MiB) | time per round (s) | ms per update |
|---|---|---|---|---|---|
| 100 | bdgp (2.15 M) | 4.35 | 44.6 | 29.1 | 294 |
| 1,000 | bdgp (2.15 M) | 4.60 | 4.7 | 279.0 | 279 |
| 100 | small (26 k) | 1.49 | 15.2 | 13.7 | 139 |
| 1,000 | small (26 k) | 1.85 | 1.9 | 126.4 | 127 |
| 10,000 | small (26 k) | 5.81 | 0.6 | 1060.9 | 106 |

1,000 BDGP clients spill 16 GB of models and optimiser states to disk, and the 10,000-client run
spills too. A client's update costs the same at every size, so time per round grows linearly
with U. Within a run the updates slow down about halfway. With ``client_ratio`` 1:1, the cheaper
one-modality rounds commit first in simulated time. A multi-modal client's round trains every
fusion subset (3 on BDGP's two views, 7 on three views), so it costs 3-7 times as much.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedsim.runtime.callbacks import Callback  # noqa: E402 - after the path: runs from a checkout

GIB = 2**30
MODELS = {
    "bdgp": {"view_dims": [1750, 79], "hidden": [512, 128], "d": 20},
    "small": {"view_dims": [20, 30, 40], "hidden": [64, 32], "d": 8},
}


class MemoryWatch:
    """The memory of this process and every process it started (Ray's GCS and raylet, the
    actors, the object store's shared memory), as the sum of their proportional set sizes
    (PSS: a shared page counts once, split among the processes mapping it), sampled on a
    thread every ``every_s`` seconds. Processes outside this tree (another Ray on the same
    machine) are not counted. ``peak`` is the largest sum, ``parts`` its split by process title."""

    def __init__(self, every_s: float = 1.0) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.peak = 0
        self.parts: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(every_s,), daemon=True)
        self._thread.start()

    def sample(self) -> tuple[int, dict[str, int]]:
        parts: dict[str, int] = {}
        for proc in [self._me, *self._me.children(recursive=True)]:
            try:
                pss = int(proc.memory_full_info().pss)
                title = "driver" if proc.pid == self._me.pid else proc.name().split(".")[0][:40]
            except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                continue
            parts[title] = parts.get(title, 0) + pss
        return sum(parts.values()), parts

    def _run(self, every_s: float) -> None:
        while not self._stop.wait(every_s):
            total, parts = self.sample()
            if total > self.peak:
                self.peak, self.parts = total, parts

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


class RoundTimer(Callback):
    """Wall time of the first and the last training upload, and a progress line now and then."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.first: float | None = None
        self.last: float | None = None
        self.uploads = 0

    def on_upload(self, record: Any, progress: Any) -> None:
        if record.phase != "train":
            return
        now = time.perf_counter()
        self.first = now if self.first is None else self.first
        self.last = now
        self.uploads += 1
        if self.uploads % max(1, self.expected // 10) == 0:
            print(f"  {self.uploads}/{self.expected} uploads, {progress.wall_time:.0f} s", file=sys.stderr, flush=True)


def run_point(args: argparse.Namespace, clients: int) -> dict[str, Any]:
    import ray

    from fedsim.config import build_config
    from fedsim.runner import run_experiment

    model = MODELS[args.model]
    watch = MemoryWatch()
    began = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=args.cpus,
        include_dashboard=False,
        logging_level="ERROR",
        object_store_memory=int(args.object_store_gib * GIB),
        _temp_dir=tempfile.mkdtemp(prefix="fedsim-scale-"),
    )
    try:
        raw = {
            "method": "afmcc",
            "dataset": "synthetic",
            "synthetic": {"view_dims": model["view_dims"], "n_clusters": 5, "n_samples": args.samples * clients},
            "num_clients": clients,
            "client_ratio": "1:1",
            "mode": "virtual",
            "seed": 0,
            "rounds": args.rounds,
            "eval_every": 0,
            "evaluation": "fmcsc",
            "kmeans_n_init": 1,
            "pretrain": {"enabled": True, "schedule": "designated", "rounds": 1},
            "afmcc": {"hidden": model["hidden"], "d": model["d"], "peers": args.peers, "batch_size": 1024},
            "tracking": {"enabled": False, "progress": False},
            "runtime": {
                "checkpoint_dir": None,
                "resident_clients": args.resident,
                "clients_per_actor": -(-clients // args.actors),
                "rounds_in_flight": args.in_flight,
                "round_timeout_s": 3600,
                "start_timeout_s": 1800,
            },
        }
        cfg = build_config(raw, [])
        timer = RoundTimer(clients * args.rounds)
        outcome = run_experiment(cfg, callbacks=[timer])
    finally:
        ray.shutdown()
    peak = watch.stop()
    wall = time.perf_counter() - began
    assert timer.first is not None and timer.last is not None
    train_s = timer.last - timer.first
    return {
        "clients": clients,
        "model": args.model,
        "parameters": outcome.summary["federation"]["num_parameters"],
        "actors": outcome.summary["federation"]["actors"],
        "peers": args.peers,
        "resident": args.resident,
        "in_flight": args.in_flight,
        "rounds": args.rounds,
        "uploads": outcome.summary["uploads"],
        "peak_gib": round(peak / GIB, 2),
        "peak_parts_gib": {k: round(v / GIB, 2) for k, v in sorted(watch.parts.items(), key=lambda kv: -kv[1])[:8]},
        "mib_per_client": round(peak / 2**20 / clients, 2),
        "round_s": round(train_s / args.rounds, 1),
        "update_ms": round(1000 * train_s / max(1, timer.uploads - 1), 1),
        "wall_s": round(wall, 1),
        "acc": round(outcome.summary["acc"], 4),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--model", choices=sorted(MODELS), default="bdgp")
    parser.add_argument("--samples", type=int, default=20, help="samples per client")
    parser.add_argument("--rounds", type=int, default=1, help="rounds per client")
    parser.add_argument("--peers", type=int, default=8, help="afmcc.peers")
    parser.add_argument("--resident", type=int, default=2, help="runtime.resident_clients")
    parser.add_argument("--in-flight", type=int, default=4, help="runtime.rounds_in_flight")
    parser.add_argument("--object-store-gib", type=float, default=2.0)
    parser.add_argument("--cpus", type=float, default=2)
    parser.add_argument("--actors", type=int, default=2, help="client actors (one per CPU)")
    args = parser.parse_args()
    rows = []
    for clients in args.clients:
        row = run_point(args, clients)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print("\n| clients | model | peak memory (GiB) | memory per client (MiB) | time per round (s) | ms per update |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['clients']:,} | {r['model']} | {r['peak_gib']} | {r['mib_per_client']} | {r['round_s']} | "
            f"{r['update_ms']} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
