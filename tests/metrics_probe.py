"""Run a small federation on its own Ray with a fixed metrics port, scraping Ray's Prometheus
endpoint from a thread while the run goes on; print the metric names seen (JSON on the last
line). Used by tests/test_telemetry.py in a subprocess, so its Ray instance is its own."""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
import urllib.request


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    os.environ.setdefault("RAY_metrics_report_interval_ms", "500")
    import ray

    from fedsim.config import build_config
    from fedsim.runner import run_experiment
    from tests.conftest import SMALL_SYNTHETIC

    port = free_port()
    ray.init(address="local", num_cpus=2, include_dashboard=False, _metrics_export_port=port, logging_level="ERROR")
    seen: set[str] = set()
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
                seen.update(m.group(1) for m in re.finditer(r"^(ray_fedsim_[a-zA-Z0-9_]+?)(?:\{| )", text, re.M))
            except OSError:
                pass
            time.sleep(0.5)

    thread = threading.Thread(target=scrape, daemon=True)
    thread.start()
    cfg = build_config({**SMALL_SYNTHETIC, "rounds": int(sys.argv[1]) if len(sys.argv) > 1 else 8})
    run_experiment(cfg)
    time.sleep(2.0)
    stop.set()
    thread.join()
    ray.shutdown()
    print(json.dumps(sorted(seen)))


if __name__ == "__main__":
    main()
