"""AFMCC benchmarks: wall time, peak memory and where the time goes.

    .venv/bin/python bench/bench_afmcc.py                      # BDGP paper protocol (configs/afmcc/bdgp.yaml)
    .venv/bin/python bench/bench_afmcc.py --memory             # 48-client Multi-Fashion-shaped synthetic setting
    .venv/bin/python bench/bench_afmcc.py --set mode=sync      # any override

Targets (issue "fedsim foundation"): the BDGP run in the paper's own time, 52.9 s on an RTX-4090
(AFMCC App., runtime table); peak memory of the 48-client setting under 12 GiB. Peak memory is
the rise of the machine's used memory over the run (driver, raylet, every actor, object store),
sampled every 0.2 s: it counts everything the run costs, not one process.

The breakdown comes from the upload log (each round's download / Eq. 6 aggregation / local
training seconds, measured inside the actors) and the evaluations' durations; "Ray and driver
overhead" is not estimated: rounds share the actors' CPUs in threads, so per-phase seconds are
thread seconds and are read as shares. Ray fetches a round's parameter buffers before the round
starts (they are its top-level arguments), so "download" counts only wrapping them as tensors;
the transfer itself is in the wall time, not in any phase.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time

import psutil


class MemorySampler(threading.Thread):
    def __init__(self, interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.interval = interval
        self.baseline = psutil.virtual_memory().used
        self.peak = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.peak = max(self.peak, psutil.virtual_memory().used - self.baseline)
            time.sleep(self.interval)

    def stop(self) -> int:
        self._halt.set()
        self.join()
        return self.peak


def fingerprint(fed) -> str:
    """A hash of what a virtual-mode run must reproduce bit for bit: the upload log's order and
    simulated times, every round's losses and the final assignments (not the measured seconds).
    The same columns and losses as tests/test_runtime.py's reproducibility test compares, so a
    benchmark machine (a GPU one, say) can check that property without the test suite."""
    cols = ["client_id", "round", "versions_read", "version_written", "sim_start", "sim_end", "staleness"]
    digest = hashlib.sha256(fed.upload_log[cols].astype(str).to_csv(index=False).encode())
    digest.update(repr([i.get("losses") for i in fed.upload_log["info"]]).encode())
    digest.update(fed.assignments.astype(str).to_csv(index=False).encode())
    return digest.hexdigest()[:16]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/afmcc/bdgp.yaml")
    parser.add_argument("--memory", action="store_true", help="the 48-client Multi-Fashion-shaped memory benchmark")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", help="write the numbers here too")
    args = parser.parse_args()

    from fedsim.config import load_config
    from fedsim.runner import run_experiment

    overrides = ["tracking.enabled=false", "runtime.include_dashboard=false"]
    config = args.config
    if args.memory:
        config = "configs/afmcc/multi_fashion.yaml"
        overrides += ["dataset=synthetic-multi_fashion", "rounds=2", "pretrain.rounds=1", "eval_every=0"]
    cfg = load_config(config, overrides + args.overrides)

    sampler = MemorySampler()
    sampler.start()
    started = time.perf_counter()
    outcome = run_experiment(cfg)
    wall = time.perf_counter() - started
    peak = sampler.stop()

    s, fed = outcome.summary, outcome.federation
    infos = list(fed.upload_log["info"])
    train = [i for i, phase in zip(infos, fed.upload_log["phase"]) if phase == "train"]
    pre = [i for i, phase in zip(infos, fed.upload_log["phase"]) if phase == "pretrain"]
    total = lambda rows, key: float(sum(r.get(key, 0.0) for r in rows))  # noqa: E731
    evaluation = float(sum(h.duration_s for h in fed.history))
    actors = s["federation"]["actors"]
    client_compute = total(train, "compute_s") + total(pre, "compute_s")
    numbers = {
        "config": config,
        "overrides": overrides + args.overrides,
        "mode": cfg.mode,
        "acc": s["acc"],
        "nmi": s["nmi"],
        "ari": s["ari"],
        "wall_time_s": wall,
        "federation_wall_s": fed.wall_time,
        "setup_s": wall - fed.wall_time,
        "peak_memory_gib": peak / 2**30,
        "actors": actors,
        "clients": cfg.num_clients,
        "pretrain_s": total(pre, "compute_s"),
        "download_s": total(train, "download_s"),
        "aggregation_s": total(train, "aggregate_s"),
        "local_training_s": total(train, "train_s"),
        "evaluation_s": evaluation,
        "client_compute_s": client_compute,
        "num_cpus_per_actor": s["federation"].get("num_cpus_per_actor"),
        "num_gpus_per_actor": s["federation"].get("num_gpus_per_actor"),
        "fingerprint": fingerprint(fed),
        # training rounds each client completed (async with a speed profile: fast clients do more)
        "rounds_per_client": {
            int(c): int(n)
            for c, n in fed.upload_log[fed.upload_log["phase"] == "train"].groupby("client_id").size().items()
        },
    }
    print(
        f"\n{cfg.method} {cfg.dataset} {cfg.num_clients} clients, {cfg.mode}: ACC {s['acc']:.4f} NMI {s['nmi']:.4f} ARI {s['ari']:.4f}"
    )
    print(
        f"wall time {wall:.1f} s (setup: Ray, actors, data {numbers['setup_s']:.1f} s; federation {fed.wall_time:.1f} s)"
    )
    print(
        f"peak memory {numbers['peak_memory_gib']:.2f} GiB over the baseline, {actors} actors "
        f"({numbers['num_cpus_per_actor']} CPUs, {numbers['num_gpus_per_actor']} GPUs each)"
    )
    print(f"fingerprint (upload log, losses, assignments) {numbers['fingerprint']}")
    print(f"training rounds per client {numbers['rounds_per_client']}")
    # Rounds share the actors' CPUs in threads, so their seconds add up to more than the wall
    # time: read them as shares of the client compute, not as wall time.
    print("client compute by phase (thread seconds, summed over concurrent rounds):")
    for key in ("pretrain_s", "download_s", "aggregation_s", "local_training_s"):
        print(f"  {key[:-2]:18s} {numbers[key]:8.1f} s  {100 * numbers[key] / max(client_compute, 1e-9):5.1f}%")
    print(f"evaluation (the driver waits) {evaluation:.1f} s")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(numbers, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
