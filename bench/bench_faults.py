"""Client actors killed with SIGKILL from outside, many times in one run (issue 26's headline):

    .venv/bin/python bench/bench_faults.py                  # 20 kills, virtual and async
    .venv/bin/python bench/bench_faults.py --kills 5 --rounds 8

A virtual run with the kills must end exactly as the same run without them (metrics, every
upload's losses, the upload log); an async run must finish every round; in both, every client's
uploads are rounds 1..n once each. Prints one JSON line per run and exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COLUMNS = ["client_id", "round", "phase", "versions_read", "version_written", "sim_start", "sim_end", "staleness"]


def main() -> int:
    import ray

    from fedsim.config import build_config
    from fedsim.runner import run_experiment
    from tests.conftest import SMALL_SYNTHETIC
    from tests.faults import ActorKiller, assert_gap_free

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--modes", default="virtual,async")
    args = parser.parse_args()
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="ERROR")
    overrides = [
        f"rounds={args.rounds}",
        "runtime.clients_per_actor=1",
        "eval_every=2",
        "speed_profile=eo:3:1",
        "runtime.start_timeout_s=600",
    ]
    failed = False
    for mode in args.modes.split(","):
        cfg = build_config(dict(SMALL_SYNTHETIC), [*overrides, f"mode={mode}"])
        clean = run_experiment(cfg) if mode == "virtual" else None
        killer = ActorKiller(kills=args.kills, every=1)
        began = time.perf_counter()
        faulted = run_experiment(cfg, callbacks=[killer])
        wall = time.perf_counter() - began
        res = faulted.federation
        assert_gap_free(res.upload_log, res.rounds_done)
        out = {
            "mode": mode,
            "kills": killer.done,
            "distinct_pids_killed": len(set(killer.pids)),
            "rounds_done": res.rounds_done,
            "uploads": int((res.upload_log["phase"] == "train").sum()),
            "rounds_rerun": faulted.summary["actor_restarts"],
            "wall_s": round(wall, 1),
            "acc": faulted.summary["acc"],
            "nmi": faulted.summary["nmi"],
        }
        if clean is not None:
            same = (
                all(clean.summary[k] == faulted.summary[k] for k in ("acc", "nmi", "ari", "purity", "simulated_time"))
                and clean.federation.upload_log[COLUMNS].astype(str).equals(res.upload_log[COLUMNS].astype(str))
                and [i["losses"] for i in clean.federation.upload_log["info"]]
                == [i["losses"] for i in res.upload_log["info"]]
            )
            out.update(
                identical_to_unfaulted=same,
                unfaulted_acc=clean.summary["acc"],
                unfaulted_wall_s=round(clean.summary["wall_time"], 1),
            )
            failed |= not same
        failed |= killer.done < args.kills
        print(json.dumps(out), flush=True)
    ray.shutdown()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
