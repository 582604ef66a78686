"""Live metrics of a federation, exported through Ray's metrics agent (ray.util.metrics).

They reach Ray's Prometheus endpoint (and so Grafana; see dashboards/) under the names Ray
gives them: ``ray_`` + the name below (counters also get ``_total``). Every series carries the
``run`` tag (the MLflow run id, or a generated id), so concurrent Tune trials stay apart.

The parameter server records what it sees at each commit (rounds, staleness, upload bytes,
simulated time) and the evaluations the driver hands it; client actors record their Eq. 6
aggregation weights and round compute time. The weights are one series per (client, peer)
pair, so they are exported for federations of at most ``PAIR_SERIES_MAX_CLIENTS`` clients only:
at 10,000 clients with 8 peers each they would be 90,000 series.
"""

from __future__ import annotations

from typing import Any

from ray.util import metrics

STALENESS_BOUNDARIES = [1, 2, 4, 8, 16, 32, 64, 128, 256]
ROUND_SECONDS_BOUNDARIES = [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60]
# a heatmap of the Eq. 6 weights is read for a few dozen clients; past that it is unreadable
# and its U x peers series only load Ray's metrics exporter
PAIR_SERIES_MAX_CLIENTS = 64


class ServerTelemetry:
    def __init__(self, run: str) -> None:
        self.tags = {"run": run}
        self.rounds = metrics.Counter(
            "fedsim_rounds_completed", "Local rounds committed to the parameter server", tag_keys=("run", "client")
        )
        self.upload_bytes = metrics.Counter(
            "fedsim_upload_bytes", "Bytes of parameters uploaded", tag_keys=("run", "client")
        )
        self.staleness = metrics.Histogram(
            "fedsim_staleness",
            "Uploads committed by others during a round",
            boundaries=STALENESS_BOUNDARIES,
            tag_keys=("run",),
        )
        self.last_staleness = metrics.Gauge(
            "fedsim_last_staleness", "Staleness of each client's latest upload", tag_keys=("run", "client")
        )
        self.sim_time = metrics.Gauge("fedsim_simulated_time", "Simulated time of the latest commit", tag_keys=("run",))
        self.score = metrics.Gauge(
            "fedsim_eval_metric", "Latest evaluation (acc, nmi, ari, purity)", tag_keys=("run", "metric")
        )

    def on_commit(self, client_id: int, staleness: int, upload_bytes: int, sim_end: float, phase: str) -> None:
        client = {**self.tags, "client": str(client_id)}
        if phase == "train":
            self.rounds.inc(1, tags=client)
        self.upload_bytes.inc(upload_bytes, tags=client)
        self.staleness.observe(staleness, tags=self.tags)
        self.last_staleness.set(staleness, tags=client)
        self.sim_time.set(sim_end, tags=self.tags)

    def on_evaluation(self, scores: dict[str, float]) -> None:
        for name, value in scores.items():
            self.score.set(value, tags={**self.tags, "metric": name})


class ClientTelemetry:
    def __init__(self, run: str, num_clients: int) -> None:
        self.run = run
        self.pairs = num_clients <= PAIR_SERIES_MAX_CLIENTS
        self.weight = metrics.Gauge(
            "fedsim_aggregation_weight",
            "Eq. 6 weight a client gave each downloaded model",
            tag_keys=("run", "client", "peer"),
        )
        self.round_seconds = metrics.Histogram(
            "fedsim_round_seconds",
            "Compute seconds of a local round",
            boundaries=ROUND_SECONDS_BOUNDARIES,
            tag_keys=("run",),
        )

    def on_round(self, client_id: int, info: dict[str, Any]) -> None:
        for peer, w in info.get("aggregation_weights", {}).items() if self.pairs else ():
            self.weight.set(w, tags={"run": self.run, "client": str(client_id), "peer": str(peer)})
        self.round_seconds.observe(info.get("compute_s", 0.0), tags={"run": self.run})
