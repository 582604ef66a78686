"""The parameter server: the federation's model store and its upload log.

It holds, for every client, the latest uploaded parameters (an ObjectRef to one flat float32
buffer in Ray's object store, so downloads are zero-copy reads on the client's node and the
server never deserialises a model) with a version number, and a log of every upload:
client, round, the versions the client read when its round started, the version it wrote, its
simulated start/end time, wall time and staleness (uploads committed by others in between).
"""

from __future__ import annotations

import heapq
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import ray


@dataclass(frozen=True)
class StoreEntry:
    client_id: int
    version: int
    modalities: tuple[int, ...]
    ref: Any  # ray.ObjectRef of a flat float32 numpy array (None in what a round is sent)
    n_samples: int = 0
    commit: int = -1  # the server's commit that wrote it (-1: a seed, written by no upload)


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
        if client_id < len(self.entries) and self.entries[client_id].client_id == client_id:
            return self.entries[client_id]
        return next(e for e in self.entries if e.client_id == client_id)  # a round's part (``part``)

    def round_inputs(
        self, client_id: int, pretrain: bool, server_average: bool = False, max_peers: int | None = None
    ) -> list[StoreEntry]:
        """The entries a round downloads: its own model when pretraining or when the server
        averages (the average comes beside it), else the peers' (peer aggregation): every
        client's, or with ``max_peers`` its own and the ``max_peers`` most recent other uploads
        (latest commit first; among entries no upload wrote yet, the clients after it in
        cyclic order), in client order."""
        if pretrain or server_average:
            return [self.entry(client_id)]
        if max_peers is None or max_peers >= len(self.entries) - 1:
            return list(self.entries)
        u = max(e.client_id for e in self.entries) + 1
        others = heapq.nsmallest(
            max_peers,
            (e for e in self.entries if e.client_id != client_id),
            key=lambda e: (-e.commit, (e.client_id - client_id) % u),
        )
        return sorted([self.entry(client_id), *others], key=lambda e: e.client_id)

    def part(self, entries: list[StoreEntry]) -> Snapshot:
        """What one round or evaluation call is sent: just the entries it reads, without their
        refs (those go as top-level arguments), so a call's size does not grow with the
        federation."""
        return Snapshot(tuple(replace(e, ref=None) for e in entries), self.commits)


@dataclass
class UploadRecord:
    client_id: int
    round: int
    phase: str  # "pretrain" | "train"
    # the version of every client's entry when the round started, or, for a round of bounded
    # peer aggregation, {client: version} of the entries it read
    versions_read: list[int] | dict[int, int]
    version_written: int
    sim_start: float
    sim_end: float
    staleness: int
    wall_time: float
    upload_bytes: int
    info: dict[str, Any] = field(default_factory=dict)


# the checkpoint's file of the server optimiser's state (FedOpt) and the last snapshot served
OPTIMIZER_FILE = "server-optimizer.pkl"


class ServerNeedsRefs(Exception):
    """Raised by a parameter server restored from its checkpoint until the driver has put the
    checkpoint's arrays back into the object store (``restored_arrays`` / ``adopt``): objects
    the driver puts outlive any later server restart, objects the server put would not."""


class ServerLost(Exception):
    """The parameter server was restarted and has no checkpoint to continue from."""


def _was_restarted() -> bool:
    """Whether Ray restarted this actor. Ray's own property reads its deprecated ``actor_id`` and
    would print a deprecation warning from every server actor; that warning is Ray's, not ours."""
    if not ray.is_initialized() or ray.get_runtime_context().get_actor_id() is None:
        return False  # not an actor (the class used in the driver's own process)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return bool(ray.get_runtime_context().was_current_actor_reconstructed)


class ParameterServer:
    """Plain class; ``ray.remote(ParameterServer)`` makes it the server actor (see cluster.py).

    With a ``checkpoint_dir`` every change is written there before the call returns (see
    ``checkpoint.py``), and a server Ray restarts (or one started for a resumed run) continues
    from it. A commit carries the driver's count of earlier commits, so one retried after a
    lost answer is applied once."""

    def __init__(
        self,
        modalities: list[tuple[int, ...]],
        run_tag: str = "fedsim",
        n_samples: list[int] | None = None,
        checkpoint_dir: str | None = None,
        server_average: Any = None,
    ) -> None:
        from fedsim.runtime.checkpoint import ServerCheckpoint
        from fedsim.runtime.telemetry import ServerTelemetry

        self._telemetry = ServerTelemetry(run_tag)
        # the method's ServerAverage (fedsim.methods.base), or None: the clients aggregate
        self._average = server_average
        # the server optimiser's state (FedOpt), and the last snapshot served with its result:
        # a snapshot asked for again (a round re-run) gets the same model, not a second step
        self._optimizer_state: Any = None  # numpy arrays (x, m, v)
        self._served: tuple[Any, Any] | None = None
        self._pins: list[tuple[int, int]] | None = None  # the last commit's (see _save)
        self._modalities = [tuple(m) for m in modalities]
        self._n_samples = list(n_samples) if n_samples is not None else [0] * len(modalities)
        u = len(modalities)
        self._entries: list[StoreEntry | None] = [None] * u
        self._states: list[tuple[int, Any]] = [(0, None)] * u
        self._log: list[UploadRecord] = []
        self._commits = 0
        self._start = time.time()
        # file names of each client's latest parameters and state in the checkpoint
        self._entry_files: list[str | None] = [None] * u
        self._state_files: list[str | None] = [None] * u
        # (client, version) -> file, for the versions rounds in flight still read (a resumed run
        # re-runs those rounds on the same inputs; see resume.py)
        self._version_files: dict[tuple[int, int], str] = {}
        self._log_bytes = 0
        self._restored: dict[str, Any] | None = None
        self._lost = False
        self._ckpt = ServerCheckpoint(checkpoint_dir) if checkpoint_dir else None
        if self._ckpt is not None and self._ckpt.exists():
            meta = self._ckpt.load_meta()
            self._commits, self._start, self._log_bytes = meta["commits"], meta["start"], meta["log_bytes"]
            self._log = [UploadRecord(**r) for r in self._ckpt.load_records(self._log_bytes)]
            self._entry_files, self._state_files = list(meta["entry_files"]), list(meta["state_files"])
            self._version_files = dict(meta["version_files"])
            self._restored = meta
            if OPTIMIZER_FILE in meta["files"]:
                self._optimizer_state, self._served = self._ckpt.load_object(OPTIMIZER_FILE)
        else:
            if self._ckpt is not None:
                self._ckpt.create()
            # a restart with nothing to restart from: say so rather than serve an empty store
            self._lost = _was_restarted()

    def _ready(self) -> None:
        if self._lost:
            raise ServerLost(
                "the parameter server was restarted and has no checkpoint (runtime.checkpoint_dir is "
                "null); set runtime.checkpoint_dir to survive a server restart"
            )
        if self._restored is not None:
            raise ServerNeedsRefs("restored from the checkpoint; the driver must adopt its arrays first")

    # -- restoring ------------------------------------------------------------------------------
    def restored_arrays(self) -> dict[str, list[Any]]:
        """The checkpoint's latest parameters (None: not seeded) and client states, per client."""
        assert self._ckpt is not None and self._restored is not None
        ckpt = self._ckpt
        return {
            "entries": [ckpt.load_array(n) if n else None for n in self._entry_files],
            "states": [ckpt.load_object(n) if n else None for n in self._state_files],
        }

    def version_arrays(self, pairs: list[tuple[int, int]]) -> list[Any]:
        """The stored parameters of the given (client, version) pairs (rounds in flight read them)."""
        assert self._ckpt is not None
        return [self._ckpt.load_array(self._version_files[(c, v)]) for c, v in pairs]

    def adopt(self, wrapped_refs: list[list[Any]]) -> None:
        """Take the driver's refs of ``restored_arrays`` (wrapped: [entry refs, state refs])."""
        assert self._restored is not None
        entry_refs, state_refs = wrapped_refs
        meta = self._restored
        for c, (version, commit, ref) in enumerate(zip(meta["versions"], meta["entry_commits"], entry_refs)):
            self._entries[c] = (
                None if ref is None else StoreEntry(c, version, self._modalities[c], ref, self._n_samples[c], commit)
            )
        self._states = [(seq, ref) for seq, ref in zip(meta["seqs"], state_refs)]
        self._restored = None

    def _save(self, pins: list[tuple[int, int]] | None = None) -> None:
        if self._ckpt is None:
            return
        keep = {(e.client_id, e.version) for e in self._entries if e is not None} | {tuple(p) for p in pins or ()}
        self._version_files = {k: v for k, v in self._version_files.items() if k in keep}
        self._ckpt.write_meta(
            {
                "version_files": self._version_files,
                "commits": self._commits,
                "start": self._start,
                "log_bytes": self._log_bytes,
                "versions": [e.version if e is not None else 0 for e in self._entries],
                "entry_commits": [e.commit if e is not None else -1 for e in self._entries],
                "seqs": [seq for seq, _ in self._states],
                "entry_files": self._entry_files,
                "state_files": self._state_files,
                "files": [
                    *self._entry_files,
                    *self._state_files,
                    *self._version_files.values(),
                    OPTIMIZER_FILE if self._optimizer_state is not None else None,
                ],
            }
        )

    # -- the store ------------------------------------------------------------------------------
    def seed_all(self, wrapped_ref: list[Any]) -> None:
        """Alg. 1 lines 2-4: every client's entry becomes the given (pretrained) model, version 0."""
        self._ready()
        (ref,) = wrapped_ref
        self._entries = [StoreEntry(c, 0, m, ref, self._n_samples[c]) for c, m in enumerate(self._modalities)]
        if self._ckpt is not None:
            name = f"seed-{self._commits}.npy"
            self._ckpt.save_array(name, ray.get(ref))
            self._entry_files = [name] * len(self._entries)
            self._version_files = {(c, 0): name for c in range(len(self._entries))}
            self._save()

    def snapshot(self) -> Snapshot:
        self._ready()
        if any(e is None for e in self._entries):
            raise RuntimeError("parameter server not seeded yet")
        return Snapshot(tuple(self._entries), self._commits, tuple(self._states))  # type: ignore[arg-type]

    def commit(
        self,
        seq: int,
        client_id: int,
        wrapped_ref: list[Any],
        round_: int,
        phase: str,
        read_commits: int,
        versions_read: list[int] | dict[int, int],
        sim_start: float,
        sim_end: float,
        upload_bytes: int,
        info: dict[str, Any],
        pins: list[tuple[int, int]] | None = None,
    ) -> UploadRecord:
        """Store an upload, the ``seq``-th commit (0-based, the driver's count). ``wrapped_ref``:
        [the flat parameters' ref, the client's state's ref] (wrapped in a list so Ray passes the
        refs, not the values); the state is kept beside the upload so a restarted client actor
        continues from it. ``read_commits`` is the commit count of the snapshot the round read
        (its staleness is counted from it). A commit already applied (its answer was lost)
        returns its record."""
        self._ready()
        if seq < self._commits:
            return self._log[seq]
        if seq > self._commits:
            raise RuntimeError(f"commit {seq} after {self._commits} commits: the driver and the server disagree")
        ref, state_ref = wrapped_ref
        seq_c = self._states[client_id][0] + 1
        previous = self._entries[client_id]
        version = (previous.version if previous is not None else 0) + 1
        if self._ckpt is not None:
            entry_name, state_name = f"u{self._commits}.npy", f"s{self._commits}.pkl"
            self._ckpt.save_array(entry_name, ray.get(ref))
            self._ckpt.save_object(state_name, ray.get(state_ref))
            self._entry_files[client_id], self._state_files[client_id] = entry_name, state_name
            self._version_files[(client_id, version)] = entry_name
        self._states[client_id] = (seq_c, state_ref)
        self._entries[client_id] = StoreEntry(
            client_id, version, self._modalities[client_id], ref, self._n_samples[client_id], self._commits
        )
        record = UploadRecord(
            client_id=client_id,
            round=round_,
            phase=phase,
            versions_read=versions_read,
            version_written=version,
            sim_start=sim_start,
            sim_end=sim_end,
            staleness=self._commits - read_commits,
            wall_time=time.time() - self._start,
            upload_bytes=upload_bytes,
            info=info,
        )
        self._commits += 1
        self._log.append(record)
        self._pins = pins
        if self._ckpt is not None:
            self._log_bytes = self._ckpt.append_record(asdict(record), self._log_bytes)
            self._save(pins)
        self._telemetry.on_commit(client_id, record.staleness, upload_bytes, sim_end, phase)
        return record

    def average(self, snapshot: Snapshot) -> tuple[Any, list[int], dict[int, float]]:
        """The method's ``ServerAverage`` over the snapshot's entries: once per snapshot, for
        every client whose round starts from it (the driver keeps the result's ref). Computed
        from the snapshot, not the live store, so a round re-run after a restart or a resume
        gets the average of what it read."""
        import numpy as np
        import torch

        from fedsim.methods.base import PeerModel

        if self._average is None:
            raise RuntimeError("the method aggregates on its clients; the server has no average to compute")
        key = (snapshot.commits, tuple(snapshot.versions()))
        if self._served is not None and self._served[0] == key:
            return self._served[1]
        arrays = ray.get([e.ref for e in snapshot.entries])
        with warnings.catch_warnings():  # object-store arrays are read-only; they are only read
            warnings.simplefilter("ignore", UserWarning)
            peers = [
                PeerModel(e.client_id, e.version, e.modalities, torch.from_numpy(a), e.n_samples)
                for e, a in zip(snapshot.entries, arrays)
            ]
        state = None if self._optimizer_state is None else tuple(torch.from_numpy(a) for a in self._optimizer_state)
        with torch.no_grad():
            values, taken, weights, state = self._average.server_model(peers, state)
        self._optimizer_state = None if state is None else tuple(t.numpy() for t in state)
        result = (np.ascontiguousarray(values.numpy()), taken, weights)
        self._served = (key, result)
        if self._ckpt is not None and self._optimizer_state is not None:
            self._ckpt.save_object(OPTIMIZER_FILE, (self._optimizer_state, self._served))
            self._save(self._pins)
        return result

    def record_evaluation(self, scores: dict[str, float]) -> None:
        """The driver reports each evaluation here so it is exported with the run's metrics."""
        self._telemetry.on_evaluation(scores)

    def upload_log(self) -> list[dict[str, Any]]:
        return [asdict(r) for r in self._log]

    def commits(self) -> int:
        return self._commits


def make_server(
    modalities: list[tuple[int, ...]],
    run_tag: str,
    n_samples: list[int] | None = None,
    restart: int = 0,
    checkpoint_dir: str | None = None,
    max_restarts: int = 0,
    server_average: Any = None,
) -> Any:
    # num_cpus=0: the server only moves references; it must never starve the clients of CPUs.
    from fedsim.runtime.names import server_actor_name

    return (
        ray.remote(num_cpus=0)(ParameterServer)
        .options(
            name=server_actor_name(run_tag, restart),
            max_restarts=max_restarts,
            max_task_retries=0,
        )
        .remote(modalities, run_tag, n_samples, checkpoint_dir, server_average)
    )
