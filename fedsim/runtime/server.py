"""The parameter server: the federation's model store and its upload log.

It holds, for every client, the latest uploaded parameters (an ObjectRef to one flat float32
buffer in Ray's object store, so downloads are zero-copy reads on the client's node and the
server never deserialises a model) with a version number, and a log of every upload:
client, round, the versions the client read when its round started, the version it wrote, its
simulated start/end time, wall time and staleness (uploads committed by others in between).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray


@dataclass(frozen=True)
class StoreEntry:
    client_id: int
    version: int
    modalities: tuple[int, ...]
    ref: Any  # ray.ObjectRef of a flat float32 numpy array
    n_samples: int = 0


@dataclass(frozen=True)
class Snapshot:
    """What a client downloads when its round starts: every client's latest entry, and the
    number of uploads committed so far (the server's logical clock)."""

    entries: tuple[StoreEntry, ...]
    commits: int
    # per client: (rounds it has trained, ref of its state after them or None); see client_state
    states: tuple[tuple[int, Any], ...] = ()

    def versions(self) -> list[int]:
        return [e.version for e in self.entries]

    def entry(self, client_id: int) -> StoreEntry:
        return self.entries[client_id]

    def round_inputs(self, client_id: int, pretrain: bool) -> list[StoreEntry]:
        """The entries a round downloads: its own model when pretraining, else every client's."""
        return [self.entry(client_id)] if pretrain else list(self.entries)


@dataclass
class UploadRecord:
    client_id: int
    round: int
    phase: str  # "pretrain" | "train"
    versions_read: list[int]
    version_written: int
    sim_start: float
    sim_end: float
    staleness: int
    wall_time: float
    upload_bytes: int
    info: dict[str, Any] = field(default_factory=dict)


class ParameterServer:
    """Plain class; ``ray.remote(ParameterServer)`` makes it the server actor (see cluster.py)."""

    def __init__(self, modalities: list[tuple[int, ...]], run_tag: str = "fedsim",
                 n_samples: list[int] | None = None) -> None:
        from fedsim.runtime.telemetry import ServerTelemetry

        self._telemetry = ServerTelemetry(run_tag)
        self._modalities = [tuple(m) for m in modalities]
        self._n_samples = list(n_samples) if n_samples is not None else [0] * len(modalities)
        self._entries: list[StoreEntry | None] = [None] * len(modalities)
        self._states: list[tuple[int, Any]] = [(0, None)] * len(modalities)
        self._log: list[UploadRecord] = []
        self._commits = 0
        self._start = time.time()

    def seed_all(self, wrapped_ref: list[Any]) -> None:
        """Alg. 1 lines 2-4: every client's entry becomes the given (pretrained) model, version 0."""
        (ref,) = wrapped_ref
        self._entries = [StoreEntry(c, 0, m, ref, self._n_samples[c]) for c, m in enumerate(self._modalities)]

    def snapshot(self) -> Snapshot:
        if any(e is None for e in self._entries):
            raise RuntimeError("parameter server not seeded yet")
        return Snapshot(tuple(self._entries), self._commits, tuple(self._states))  # type: ignore[arg-type]

    def commit(self, client_id: int, wrapped_ref: list[Any], round_: int, phase: str, read: Snapshot,
               sim_start: float, sim_end: float, upload_bytes: int, info: dict[str, Any]) -> UploadRecord:
        """Store an upload. ``wrapped_ref``: [the flat parameters' ref, the client's state's ref]
        (wrapped in a list so Ray passes the refs, not the values); the state is kept beside the
        upload so a restarted client actor continues from it."""
        ref, state_ref = wrapped_ref
        self._states[client_id] = (self._states[client_id][0] + 1, state_ref)
        previous = self._entries[client_id]
        version = (previous.version if previous is not None else 0) + 1
        self._entries[client_id] = StoreEntry(client_id, version, self._modalities[client_id], ref,
                                               self._n_samples[client_id])
        record = UploadRecord(
            client_id=client_id, round=round_, phase=phase, versions_read=read.versions(),
            version_written=version, sim_start=sim_start, sim_end=sim_end,
            staleness=self._commits - read.commits, wall_time=time.time() - self._start,
            upload_bytes=upload_bytes, info=info,
        )
        self._commits += 1
        self._log.append(record)
        self._telemetry.on_commit(client_id, record.staleness, upload_bytes, sim_end, phase)
        return record

    def record_evaluation(self, scores: dict[str, float]) -> None:
        """The driver reports each evaluation here so it is exported with the run's metrics."""
        self._telemetry.on_evaluation(scores)

    def upload_log(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self._log]

    def commits(self) -> int:
        return self._commits


def make_server(modalities: list[tuple[int, ...]], run_tag: str, n_samples: list[int] | None = None,
                restart: int = 0) -> Any:
    # num_cpus=0: the server only moves references; it must never starve the clients of CPUs.
    from fedsim.runtime.names import server_actor_name

    return ray.remote(num_cpus=0)(ParameterServer).options(name=server_actor_name(run_tag, restart)).remote(
        modalities, run_tag, n_samples)
