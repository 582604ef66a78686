"""The federation driver: one protocol, three orchestration modes.

Every mode runs the same client round (``ClientActor.run_round``: download a snapshot of the
parameter server, aggregate, train, return the new flat parameters) and commits it to the
``ParameterServer``; they differ only in *when* rounds start and in which order they commit.

- ``sync``: every participating client starts from the same snapshot, a barrier, then the
  uploads are committed in client order. Simulated time advances by the slowest client's round.
- ``async``: every client is kept busy; the driver reacts to whichever round finishes first
  (``ray.wait``), commits it and immediately starts that client's next round from a fresh
  snapshot. A client of relative speed m really takes 1/m as long (it sleeps out the difference).
- ``virtual``: the asynchronous protocol ordered by a ``VirtualClock``: a round's finish time is
  its start time + cost / m, rounds commit in (finish time, client id) order, and each round
  reads the snapshot current at its simulated start. Rounds still *execute* concurrently on the
  actors, but nothing depends on real timing, so a seed gives bit-for-bit the same run.

The driver plays the network: clients return their upload to it and it commits them, so the
commit order is the mode's, not the scheduler's. Evaluation reads the server's copies.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import pandas as pd
import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, RayActorError, RayTaskError

from fedsim.config import ExperimentConfig
from fedsim.errors import FedsimError
from fedsim.evaluation import argmax_assignments, global_kmeans
from fedsim.metrics import classification_metrics, cluster_accuracy, clustering_metrics
from fedsim.runtime.callbacks import Callback, EvaluationRecord, Progress
from fedsim.runtime.clock import VirtualClock
from fedsim.runtime.resume import DriverState, InFlight, save_driver_state
from fedsim.runtime.server import ServerNeedsRefs, Snapshot, StoreEntry, UploadRecord

if TYPE_CHECKING:
    from fedsim.privacy import PrivacyPlan

# An actor that died (RayActorError) or is restarting / unreachable (ActorUnavailableError):
# both mean "re-run this on the restarted actor".
ACTOR_LOST = (RayActorError, ActorUnavailableError)


class RestartWait:
    """How long to keep re-trying a call on a lost actor: up to a deadline
    (``runtime.start_timeout_s`` after the first loss), not a count of tries.

    A call on an actor Ray is restarting fails at once (``max_task_retries=0``), so a count of
    tries measured nothing: 8 tries ran out in ~55 s, while a restart under memory pressure can
    take longer. The pause between tries grows from 0.1 s to 2 s."""

    def __init__(self, timeout_s: float, what: str) -> None:
        self.timeout_s = timeout_s
        self.what = what
        self.deadline = time.monotonic() + timeout_s
        self.tries = 0

    def pause(self, error: BaseException) -> None:
        """Sleep before the next try, or raise if the deadline has passed."""
        if time.monotonic() >= self.deadline:
            raise TimeoutError(
                f"{self.what} was lost and not back after {self.timeout_s:g} s (runtime.start_timeout_s; last "
                f"error: {type(error).__name__}); see `ray status` and the actor's log under "
                "/tmp/ray/session_latest/logs"
            ) from error
        time.sleep(min(0.1 * 2.0**self.tries, 2.0, max(0.0, self.deadline - time.monotonic())))
        self.tries += 1


def _get(refs: Any, timeout_s: float, what: str) -> Any:
    """``ray.get`` that cannot wait forever: a call on an actor that never got scheduled blocks
    in Ray's C++ core, where not even a signal handler (pytest-timeout, Ctrl-C) runs."""
    try:
        return ray.get(refs, timeout=timeout_s)
    except RayTaskError as exc:
        if isinstance(exc.cause, FedsimError):  # the actor refused (a diverged model): one line, no remote traceback
            raise exc.cause from None
        raise
    except GetTimeoutError as exc:
        raise TimeoutError(
            f"{what} did not answer in {timeout_s:g} s (runtime.round_timeout_s); are the actors "
            "pending for lack of CPUs/GPUs? see `ray status`"
        ) from exc


@dataclass
class RoundJob:
    client_id: int
    round: int
    phase: str
    snapshot: Snapshot
    sim_start: float
    sim_end: float
    flat_ref: Any = None
    info_ref: Any = None
    state_ref: Any = None  # the client's state after this round (client_state), kept with the upload
    attempts: int = 0
    replayed: dict[str, Any] | None = None  # resumed run: the server's record of this round, committed already
    inputs: list[StoreEntry] | None = None  # the entries the round reads, chosen at submit


@dataclass
class FederationResult:
    metrics: dict[str, float]
    history: list[EvaluationRecord]
    upload_log: pd.DataFrame
    assignments: pd.DataFrame
    rounds_done: list[int]
    sim_time: float
    wall_time: float
    restarts: int = 0
    server_restarts: int = 0
    privacy_capped: list[int] = field(default_factory=list)  # clients stopped by their release bound


class Federation:
    def __init__(
        self,
        cfg: ExperimentConfig,
        server: Any,
        actor_of: dict[int, Any],
        clients: dict[int, dict[str, Any]],
        speeds: np.ndarray,
        n_clusters: int,
        callback: Callback,
        checkpoint_folder: str | None = None,
        resume: DriverState | None = None,
        privacy: PrivacyPlan | None = None,
    ) -> None:
        self.cfg = cfg
        self.server = server
        self.actor_of = actor_of
        self.clients = clients  # per client: n_samples, modalities, round_cost, pretrain_cost
        self.speeds = speeds
        self.n_clusters = n_clusters
        self.callback = callback
        self.u = cfg.num_clients
        self.rounds_done = [0] * self.u
        self.train_uploads = 0
        self.total_uploads = 0
        self.sim_time = 0.0
        self.history: list[EvaluationRecord] = []
        self.restarts = 0
        self.server_restarts = 0
        self._checkpoint_folder = checkpoint_folder
        self._resume = resume
        self._inflight: dict[int, RoundJob] = {}  # virtual mode: the rounds in flight (pinned on disk)
        self._killed = False
        self._wall_start = time.perf_counter()
        self._latest: dict[str, float] = {}
        self._phase = "train"
        self._pretrain_rounds = (0, 0)
        self._has_extras = bool(clients[0]["metric_names"])
        # ServerAverage methods: the server averages each snapshot once; every round starting
        # from that snapshot downloads the result (the ref of the latest snapshot's is kept)
        self._server_average = bool(clients[0]["server_average"])
        self._average_ref: tuple[Any, Any] | None = None  # (snapshot key, ref)
        # peer aggregation over a bounded number of peers (the method's ``max_peers``)
        self._max_peers: int | None = clients[0].get("max_peers")
        # the last snapshot and the commit count it was read at: the store changes only by a
        # commit (or a seeding, or a server restart, which drop it), so rounds started between
        # two commits share one snapshot instead of asking the server for U entries each
        self._snapshot_at: tuple[int, Snapshot] | None = None
        # sync and virtual modes: how many rounds are handed to the actors ahead (None: all)
        self._window = cfg.runtime.rounds_in_flight if cfg.mode != "async" else None
        self._group = cfg.stop.members(self.u) if cfg.stop.rule == "group" else []
        # DP: each client's noise multiplier, and the training uploads its release bound allows
        # per federation (fedsim.privacy.release_bounds), which the driver enforces
        self._privacy = privacy
        self._capped: set[int] = set()

    # -- stop rules -----------------------------------------------------------------------------
    def _continues(self, cid: int) -> bool:
        rule = self.cfg.stop.rule
        if rule == "rounds":
            return self.rounds_done[cid] < self.cfg.rounds
        return not self._finished()

    def _spent(self, cid: int) -> bool:
        """DP: client ``cid`` has made all the training uploads its release bound allows, so a
        round of it that the stop rule would commit is dropped instead, and it starts no more
        (``fedsim.privacy.release_bounds``). Only reached where the stop rule alone does not
        bound the count (the group rule in async mode); the privacy record names the client."""
        if self._privacy is None or self.rounds_done[cid] < self._privacy.bounds.train[cid]:
            return False
        self._capped.add(cid)
        return True

    def _finished(self) -> bool:
        rule = self.cfg.stop.rule
        if rule == "rounds":
            return all(r >= self.cfg.rounds for r in self.rounds_done)
        if rule == "group":
            return all(self.rounds_done[c] >= self.cfg.stop.group_rounds for c in self._group)
        return False  # sim_time: ends when no round fits in the budget

    def _over_budget(self, sim_end: float) -> bool:
        return self.cfg.stop.rule == "sim_time" and sim_end > self.cfg.stop.sim_time_budget

    def _expected_uploads(self) -> int | None:
        return self.u * self.cfg.rounds if self.cfg.stop.rule == "rounds" else None

    # -- rounds -----------------------------------------------------------------------------------
    def _server(self, call: Callable[[], Any]) -> Any:
        """A call on the parameter server that survives the server's restart: a lost server is
        waited for (``runtime.start_timeout_s``); one restored from its checkpoint first gets the
        checkpoint's arrays back as objects the driver owns (``ServerNeedsRefs``)."""
        wait: RestartWait | None = None
        while True:
            try:
                return _get(call(), self.cfg.runtime.round_timeout_s, "the parameter server")
            except ServerNeedsRefs:
                self._snapshot_at = None
                self._readopt()
            except ACTOR_LOST as exc:
                self._snapshot_at = None
                if wait is None:
                    self.server_restarts += 1
                    wait = RestartWait(self.cfg.runtime.start_timeout_s, "the parameter server")
                wait.pause(exc)

    def _seed_all(self, ref: Any) -> None:
        self._snapshot_at = None
        self._server(lambda: self.server.seed_all.remote([ref]))

    def _readopt(self) -> None:
        try:
            arrays = _get(
                self.server.restored_arrays.remote(), self.cfg.runtime.round_timeout_s, "the parameter server"
            )
            entries = [None if a is None else ray.put(a) for a in arrays["entries"]]
            states = [None if s is None else ray.put(s) for s in arrays["states"]]
            _get(self.server.adopt.remote([entries, states]), self.cfg.runtime.round_timeout_s, "the parameter server")
        except ACTOR_LOST:
            pass  # lost again meanwhile: the caller's next try finds out

    def _duration(self, cid: int, phase: str) -> float:
        key = "pretrain_cost" if phase == "pretrain" else "round_cost"
        return self.clients[cid][key] / self.speeds[cid]

    def _snapshot(self) -> Snapshot:
        if self._snapshot_at is None or self._snapshot_at[0] != self.total_uploads:
            self._snapshot_at = (self.total_uploads, self._server(lambda: self.server.snapshot.remote()))
        return self._snapshot_at[1]

    def _submit(self, job: RoundJob) -> RoundJob:
        # Real modes wait out the speed difference; the fastest client never waits.
        slowdown = 1.0 if self.cfg.mode == "virtual" else float(self.speeds.max() / self.speeds[job.client_id])
        pretrain = job.phase == "pretrain"
        # The buffers' refs go as top-level arguments: Ray resolves them before the round runs, so
        # no thread of the threaded client actor calls ray.get (Ray has had hangs with concurrent
        # ray.get in one process, ray-project/ray#54007). With the old in-actor ray.get, one full
        # test run here hung a round until its timeout; that this was the cause is not proven.
        inputs = job.inputs = job.snapshot.round_inputs(job.client_id, pretrain, self._server_average, self._max_peers)
        params = [e.ref for e in inputs]
        if self._server_average and not pretrain:
            params.append(self._average_of(job.snapshot))
        # the client's state as kept with its last upload: a top-level argument too (None, or a
        # ref Ray resolves); the actor uses it only when it does not hold that state already
        seq, state = job.snapshot.states[job.client_id]
        sigma = self._privacy.noise_multipliers[job.client_id] if self._privacy is not None else None
        job.flat_ref, job.info_ref, job.state_ref = self.actor_of[job.client_id].run_round.remote(
            job.client_id,
            job.round,
            job.snapshot.part(inputs),
            pretrain,
            slowdown,
            seq,
            state,
            *params,
            noise_multiplier=sigma,
        )
        job.attempts += 1
        return job

    def _average_of(self, snapshot: Snapshot) -> Any:
        """The ref of the server's average of ``snapshot`` (computed once per snapshot). A call
        on a lost server fails the round's task, which is then re-run like any lost round."""
        key = (snapshot.commits, tuple(snapshot.versions()))
        if self._average_ref is None or self._average_ref[0] != key:
            self._average_ref = (key, self.server.average.remote(snapshot))
        return self._average_ref[1]

    def _launch(self, cid: int, phase: str, sim_start: float, snapshot: Snapshot | None = None) -> RoundJob:
        snap = snapshot if snapshot is not None else self._snapshot()
        job = RoundJob(
            cid,
            self.rounds_done[cid] + 1 if phase == "train" else 0,
            phase,
            snap,
            sim_start,
            sim_start + self._duration(cid, phase),
        )
        return self._submit(job) if self._window is None else job

    def _ahead(self, jobs: list[RoundJob]) -> None:
        """Hand the first ``runtime.rounds_in_flight`` of ``jobs`` (in commit order) that are not
        running yet to the actors."""
        if self._window is not None:
            for job in jobs[: self._window]:
                if job.info_ref is None and job.replayed is None:
                    self._submit(job)

    def _resolve(self, job: RoundJob) -> dict[str, Any]:
        """Wait for a round; if its actor died, re-run the same round on the same snapshot and the
        same client state once Ray has restarted the actor (the upload log then has neither a
        gap nor a double, and the round's result is the one it would have had)."""
        if job.replayed is not None:
            return dict(job.replayed["info"])
        if job.info_ref is None:  # not handed to its actor yet (``runtime.rounds_in_flight``)
            self._submit(job)
        wait: RestartWait | None = None
        while True:
            try:
                return ray.get(job.info_ref, timeout=self.cfg.runtime.round_timeout_s)
            except ACTOR_LOST as exc:
                if wait is None:
                    self.restarts += 1
                    wait = RestartWait(
                        self.cfg.runtime.start_timeout_s, f"the actor of client {job.client_id} (round {job.round})"
                    )
                wait.pause(exc)
                # the loss may be the parameter server's (a round reads its average): ask anew
                self._average_ref = None
                self._submit(job)
            except GetTimeoutError as exc:
                raise TimeoutError(
                    f"client {job.client_id} round {job.round} did not finish in "
                    f"{self.cfg.runtime.round_timeout_s} s (runtime.round_timeout_s); are the actors "
                    f"pending for lack of CPUs/GPUs? see `ray status`"
                ) from exc

    def _commit(self, job: RoundJob, info: dict[str, Any]) -> UploadRecord:
        record: UploadRecord = self._server(
            lambda: self.server.commit.remote(
                self.total_uploads,
                job.client_id,
                [job.flat_ref, job.state_ref],
                job.round,
                job.phase,
                job.snapshot.commits,
                self._versions_read(job),
                job.sim_start,
                job.sim_end,
                info["upload_bytes"],
                info,
                self._pins(job),
            )
        )
        self._mirror(job, record)
        self.total_uploads += 1
        self.sim_time = max(self.sim_time, job.sim_end)
        if job.phase == "train":
            self.rounds_done[job.client_id] += 1
            self.train_uploads += 1
        self.callback.on_upload(record, self.progress())
        if job.phase == "train" and self.cfg.eval_every and self.train_uploads % (self.cfg.eval_every * self.u) == 0:
            self.evaluate()
        self._maybe_inject_fault()
        return record

    def _versions_read(self, job: RoundJob) -> list[int] | dict[int, int]:
        """What the upload log records as read: every entry's version, or, for a round of
        bounded peer aggregation, {client: version} of the entries it read (O(peers), not O(U))."""
        if self._max_peers is None or self._max_peers >= self.u - 1 or job.phase != "train" or self._server_average:
            return job.snapshot.versions()
        inputs = job.inputs  # chosen at submit; a replayed round (resumed run) was never submitted
        if inputs is None:
            inputs = job.snapshot.round_inputs(job.client_id, False, False, self._max_peers)
        return {e.client_id: e.version for e in inputs}

    def _mirror(self, job: RoundJob, record: UploadRecord) -> None:
        """Apply a commit to the driver's copy of the store, as the server applied it (the new
        entry and the client's state), so the next round's snapshot needs no call to the
        server: at 10,000 clients that call moves 10,000 entries a commit."""
        held = self._snapshot_at
        if held is None or held[0] != self.total_uploads or job.replayed is not None:
            self._snapshot_at = None  # the server's copy is read again when next needed
            return
        snapshot, c = held[1], job.client_id
        old = snapshot.entry(c)
        entries = list(snapshot.entries)
        entries[c] = StoreEntry(
            c, record.version_written, old.modalities, job.flat_ref, old.n_samples, self.total_uploads
        )
        states = list(snapshot.states)
        states[c] = (states[c][0] + 1, job.state_ref)
        self._snapshot_at = (self.total_uploads + 1, Snapshot(tuple(entries), self.total_uploads + 1, tuple(states)))

    def _pins(self, job: RoundJob) -> list[tuple[int, int]] | None:
        """Virtual mode: the (client, version) pairs the rounds in flight read, this one included,
        which the server keeps on disk so a resumed run can re-run them (resume.py)."""
        if self.cfg.mode != "virtual" or self._checkpoint_folder is None:
            return None
        jobs = [*self._inflight.values(), job]
        return sorted({(c, v) for j in jobs for c, v in enumerate(j.snapshot.versions())})

    def _save_driver(self) -> None:
        if self._checkpoint_folder is None:
            return
        inflight = [
            InFlight(
                j.client_id,
                j.round,
                j.phase,
                j.sim_start,
                j.sim_end,
                j.snapshot.versions(),
                j.snapshot.commits,
                [e.commit for e in j.snapshot.entries],
            )
            for j in self._inflight.values()
        ]
        save_driver_state(
            self._checkpoint_folder,
            DriverState(
                self.total_uploads,
                self.train_uploads,
                list(self.rounds_done),
                self.sim_time,
                list(self.history),
                dict(self._latest),
                inflight,
                self.restarts,
                self.server_restarts,
            ),
        )

    def _restore(self, state: DriverState) -> list[RoundJob]:
        """A resumed run: the driver's counters, and its rounds in flight rebuilt on the inputs
        they read (the one round committed after the driver's checkpoint is replayed)."""
        self.total_uploads, self.train_uploads = state.total_uploads, state.train_uploads
        self.rounds_done, self.sim_time = list(state.rounds_done), state.sim_time
        self.history, self._latest = list(state.history), dict(state.latest)
        self.restarts, self.server_restarts = state.restarts, state.server_restarts
        commits = self._server(lambda: self.server.commits.remote())
        replay: dict[str, Any] | None = None
        if commits > state.total_uploads:
            if commits > state.total_uploads + 1:
                raise RuntimeError(
                    f"the server holds {commits} commits, the driver's checkpoint {state.total_uploads}; "
                    "more than one apart, so the checkpoint cannot be resumed"
                )
            replay = self._server(lambda: self.server.upload_log.remote())[state.total_uploads]
        current = self._snapshot()
        pairs = sorted({(c, v) for f in state.inflight for c, v in enumerate(f.versions)})
        arrays = self._server(lambda: self.server.version_arrays.remote(pairs))
        refs = {pair: ray.put(a) for pair, a in zip(pairs, arrays)}
        jobs = []
        for f in state.inflight:
            entries = tuple(
                StoreEntry(c, v, current.entries[c].modalities, refs[(c, v)], current.entries[c].n_samples, commit)
                for c, (v, commit) in enumerate(zip(f.versions, f.commits_read()))
            )
            job = RoundJob(
                f.client_id, f.round, f.phase, Snapshot(entries, f.commits, current.states), f.sim_start, f.sim_end
            )
            if replay is not None and (replay["client_id"], replay["round"], replay["phase"]) == (
                f.client_id,
                f.round,
                f.phase,
            ):
                job.replayed = replay
            elif self._window is None:
                self._submit(job)
            jobs.append(job)
        return jobs

    def _maybe_inject_fault(self) -> None:
        fault = self.cfg.fault
        if fault.kill_client is not None and not self._killed and self.total_uploads >= fault.after_uploads:
            self._killed = True
            ray.kill(self.actor_of[fault.kill_client], no_restart=False)

    def progress(self) -> Progress:
        return Progress(
            self.cfg.mode,
            list(self.rounds_done),
            self.train_uploads,
            self._expected_uploads(),
            self.sim_time,
            time.perf_counter() - self._wall_start,
            dict(self._latest),
            self._phase,
            self._pretrain_rounds,
        )

    # -- phases -----------------------------------------------------------------------------------
    def pretrain(self, rounds: int) -> None:
        """AFMCC Alg. 1: pretrain one model, then seed every client with it.

        ``designated``: ``pretrain.client`` trains alone. ``chain``: the model passes through
        clients 0..U-1 in turn (each starts from the previous one's upload), ``rounds`` rounds
        each; simulated time adds up along the chain."""
        chain = [self.cfg.pretrain.client]
        if self.cfg.pretrain.schedule == "chain" and rounds:
            chain = list(range(self.u))
        # resolved here and put by the driver: the driver owns every buffer the server stores
        init = ray.put(
            self._with_retry(lambda: self._eval_get(self.actor_of[chain[0]].initial_parameters.remote(chain[0])))
        )
        self._seed_all(init)
        t = 0.0
        self._phase = "pretrain"
        total, done = rounds * len(chain), 0
        for position, client in enumerate(chain):
            if position:  # hand the model on: every entry becomes the previous client's upload
                latest = self._snapshot().entry(chain[position - 1]).ref
                self._seed_all(latest)
            for _ in range(rounds):
                self._pretrain_rounds = (done, total)
                job = self._launch(client, "pretrain", t)
                self._commit(job, self._resolve(job))
                t = job.sim_end
                done += 1
        latest = self._snapshot().entry(chain[-1]).ref
        self._seed_all(latest)
        self.sim_time = t
        self._phase = "train"

    def run(self) -> FederationResult:
        if self._resume is None:
            self.pretrain(self.cfg.pretrain_rounds)
        {"sync": self._run_sync, "async": self._run_async, "virtual": self._run_virtual}[self.cfg.mode]()
        final = self.evaluate(final=True)
        log = pd.DataFrame(self._server(lambda: self.server.upload_log.remote()))
        return FederationResult(
            metrics=final.metrics,
            history=self.history,
            upload_log=log,
            assignments=self._assignments,
            rounds_done=list(self.rounds_done),
            sim_time=self.sim_time,
            wall_time=time.perf_counter() - self._wall_start,
            restarts=self.restarts,
            server_restarts=self.server_restarts,
            privacy_capped=sorted(self._capped),
        )

    def _run_sync(self) -> None:
        t = self.sim_time
        while not self._finished():
            participants = [c for c in range(self.u) if self._continues(c)]
            if not participants:
                break
            round_end = t + max(self._duration(c, "train") for c in participants)
            if self._over_budget(round_end):
                break
            if self._privacy is not None:  # the round happens: a client whose bound is spent sits it out
                participants = [c for c in participants if not self._spent(c)]
                if not participants:
                    break
                round_end = t + max(self._duration(c, "train") for c in participants)
            if self.cfg.round_order == "sequential":
                # one after another: each client reads the store as its predecessors left it
                round_end = t + sum(self._duration(c, "train") for c in participants)
                if self._over_budget(round_end):
                    break
                for c in participants:
                    job = self._launch(c, "train", t)
                    self._commit(job, self._resolve(job))
                    t = job.sim_end
                continue
            snapshot = self._snapshot()  # the barrier: everyone reads the same state
            jobs = [self._launch(c, "train", t, snapshot) for c in participants]
            infos = []
            for i, job in enumerate(jobs):
                self._ahead(jobs[i:])
                infos.append(self._resolve(job))
            for job, info in zip(jobs, infos):
                job.sim_end = round_end
                self._commit(job, info)
            t = round_end

    def _run_async(self) -> None:
        t0 = self.sim_time
        inflight = {c: self._launch(c, "train", t0) for c in range(self.u) if self._continues(c)}
        while inflight:
            by_ref = {job.info_ref: cid for cid, job in inflight.items()}
            ready, _ = ray.wait(list(by_ref), num_returns=1, timeout=self.cfg.runtime.round_timeout_s)
            if not ready:
                raise TimeoutError(f"no client finished a round in {self.cfg.runtime.round_timeout_s} s")
            job = inflight.pop(by_ref[ready[0]])
            if self._over_budget(job.sim_end) or self._spent(job.client_id):
                continue
            self._commit(job, self._resolve(job))
            if self._finished():
                break
            if self._continues(job.client_id):
                inflight[job.client_id] = self._launch(job.client_id, "train", job.sim_end)

    def _run_virtual(self) -> None:
        clock = VirtualClock()
        inflight = self._inflight

        def start(cid: int, at: float) -> None:
            inflight[cid] = self._launch(cid, "train", at)
            clock.schedule(cid, inflight[cid].sim_end)

        if self._resume is not None:
            for job in self._restore(self._resume):
                inflight[job.client_id] = job
                clock.schedule(job.client_id, job.sim_end)
        else:
            for cid in range(self.u):
                if self._continues(cid):
                    start(cid, self.sim_time)
        while len(clock):
            self._save_driver()  # the clock's state between two steps: what a resumed run starts from
            if self._window is not None:
                self._ahead([inflight[c] for c in clock.upcoming(self._window)])
            finish, cid = clock.pop()
            job = inflight.pop(cid)
            if self._over_budget(finish) or self._spent(cid):
                continue
            self._commit(job, self._resolve(job))
            if self._finished():
                break
            if self._continues(cid):
                start(cid, finish)

    # -- evaluation -------------------------------------------------------------------------------
    def _eval_get(self, refs: Any) -> Any:
        return _get(refs, self.cfg.runtime.round_timeout_s, "an evaluation call on the client actors")

    def _with_retry(self, fn: Callable[[], Any]) -> Any:
        """An evaluation (reads only the server's copies): re-run whole if an actor was lost."""
        wait: RestartWait | None = None
        while True:
            try:
                return fn()
            except ACTOR_LOST as exc:
                if wait is None:
                    self.restarts += 1
                    wait = RestartWait(self.cfg.runtime.start_timeout_s, "a client actor (evaluation)")
                wait.pause(exc)

    def evaluate(self, final: bool = False) -> EvaluationRecord:
        """Metrics over all clients, each client using the server's copy of its model.

        Clustering (transductive, every sample): ``fmcsc`` (default, PROTOCOLS.md): k-means on
        client 0's features, every other client runs k-means initialised with those centres;
        ``global_kmeans``: one k-means over all clients' embeddings; ``argmax``: argmax of the
        method's soft assignments. Classification: every client predicts its own held-out test
        split; accuracy, macro-F1 and UAR over all test samples. At the final evaluation the
        method's optional ``selection_loss`` and ``extra_metrics`` are averaged over clients,
        weighted by sample count."""
        began = time.perf_counter()
        snapshot = self._snapshot()
        cfg = self.cfg
        refs = {c: snapshot.entry(c).ref for c in range(self.u)}  # top-level: Ray passes each array
        # Methods evaluated on their aggregate (FMCSC's per-pattern global models) also get the
        # peers' latest uploads a round would read, as top-level refs like a round's.
        aggregate = bool(self.clients[0].get("evaluates_aggregate"))

        def agg_of(c: int) -> tuple[Any, ...]:
            if not aggregate:
                return ()
            inputs = snapshot.round_inputs(c, False, False, self._max_peers)
            return (snapshot.part(inputs), *(e.ref for e in inputs))

        if cfg.task == "classification":
            parts = self._with_retry(
                lambda: self._eval_get([self.actor_of[c].classify.remote(c, refs[c]) for c in range(self.u)])
            )
            true = np.concatenate([p["labels_true"] for p in parts])
            pred = argmax_assignments(np.concatenate([p["probabilities"] for p in parts]))
            metrics = classification_metrics(true, pred)
        else:
            if cfg.evaluation == "fmcsc":

                def run() -> list[dict[str, Any]]:
                    first = self._eval_get(
                        self.actor_of[0].cluster.remote(
                            0, refs[0], None, self.n_clusters, cfg.kmeans_n_init, cfg.seed, *agg_of(0)
                        )
                    )
                    rest = self._eval_get(
                        [
                            self.actor_of[c].cluster.remote(
                                c, refs[c], first["centres"], self.n_clusters, cfg.kmeans_n_init, cfg.seed, *agg_of(c)
                            )
                            for c in range(1, self.u)
                        ]
                    )
                    return [first, *rest]

                parts = self._with_retry(run)
                pred = np.concatenate([p["labels_pred"] for p in parts])
            elif cfg.evaluation == "global_kmeans":
                parts = self._with_retry(
                    lambda: self._eval_get(
                        [self.actor_of[c].embed.remote(c, refs[c], *agg_of(c)) for c in range(self.u)]
                    )
                )
                pred = global_kmeans(
                    np.concatenate([p["features"] for p in parts]),
                    self.n_clusters,
                    seed=cfg.seed,
                    n_init=cfg.kmeans_n_init,
                )
            else:
                parts = self._with_retry(
                    lambda: self._eval_get(
                        [self.actor_of[c].soft_assignments.remote(c, refs[c], *agg_of(c)) for c in range(self.u)]
                    )
                )
                pred = argmax_assignments(np.concatenate([p["probabilities"] for p in parts]))
            true = np.concatenate([p["labels_true"] for p in parts])
            metrics = clustering_metrics(true, pred)
            # Diagnostic: each client's own ACC. A high mean with a low global ACC means the clients'
            # cluster ids disagree (their models embed differently), not that the features are poor.
            sizes = np.cumsum([0] + [len(p["labels_true"]) for p in parts])
            metrics["client_acc_mean"] = float(
                np.mean([cluster_accuracy(true[a:b], pred[a:b]) for a, b in zip(sizes[:-1], sizes[1:])])
            )
        if final and self._has_extras:
            extras = self._with_retry(
                lambda: self._eval_get(
                    [self.actor_of[c].final_extras.remote(c, refs[c], *agg_of(c)) for c in range(self.u)]
                )
            )
            weights = np.array([e["n_samples"] for e in extras], dtype=float)
            for key in sorted({k for e in extras for k in e["metrics"]}):
                values = np.array([e["metrics"].get(key, np.nan) for e in extras])
                ok = ~np.isnan(values)
                if ok.any():
                    metrics[key] = float(np.average(values[ok], weights=weights[ok]))
        self._latest = metrics
        self._assignments = pd.DataFrame(
            {
                "client_id": np.concatenate([np.full(len(p["labels_true"]), c) for c, p in enumerate(parts)]),
                "sample_index": np.concatenate([p["indices"] for p in parts]),
                "label_true": true,
                "label_pred": pred,
            }
        )
        record = EvaluationRecord(
            step=len(self.history),
            uploads=self.train_uploads,
            sim_time=self.sim_time,
            wall_time=time.perf_counter() - self._wall_start,
            metrics=metrics,
            final=final,
            duration_s=time.perf_counter() - began,
        )
        self.history.append(record)
        self.server.record_evaluation.remote(
            {k: metrics[k] for k in ("acc", "nmi", "ari", "purity", "accuracy", "macro_f1", "uar") if k in metrics}
        )
        self.callback.on_evaluation(record, self.progress())
        return record
