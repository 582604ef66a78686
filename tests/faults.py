"""Kill -9 from outside: a callback that SIGKILLs the processes of a run's client actors while the
run goes on (used by test_faults.py and bench/faults.py)."""

from __future__ import annotations

import os
import signal
from typing import Any

import ray

from fedsim.runtime.callbacks import Callback, Progress
from fedsim.runtime.names import actor_prefix
from fedsim.runtime.server import UploadRecord


class ActorKiller(Callback):
    """After every ``every``-th upload, ``kill -9`` the next client actor (round robin) of the run,
    until ``kills`` kills are done. The process id comes from the actor itself; an actor that is
    restarting does not answer, and is skipped until a later upload. ``server=True`` kills the
    parameter server instead (``every`` and ``kills`` likewise)."""

    def __init__(self, kills: int, every: int = 2, server: bool = False) -> None:
        self.kills = kills
        self.every = every
        self.server = server
        self.done = 0
        self.pids: list[int] = []
        self._prefix = ""
        self._next = 0

    def on_run_start(self, info: dict[str, Any]) -> None:
        self._prefix = actor_prefix(info["run_tag"], info.get("restart", 0))

    def _targets(self) -> list[str]:
        kind = "/parameter-server" if self.server else "/clients-"
        return sorted(n for n in ray.util.list_named_actors() if n.startswith(self._prefix + kind))

    def on_upload(self, record: UploadRecord, progress: Progress) -> None:
        if self.done >= self.kills or progress.uploads % self.every or not self._prefix:
            return
        names = self._targets()
        if not names:
            return
        name = names[self._next % len(names)]
        try:
            handle = ray.get_actor(name)
            pid = ray.get(handle.__ray_call__.remote(lambda self: os.getpid()), timeout=10)
        except Exception:  # noqa: BLE001 - restarting or busy: try again at a later upload
            return
        os.kill(pid, signal.SIGKILL)
        self.pids.append(pid)
        self.done += 1
        self._next += 1


def assert_gap_free(log, rounds_done: list[int]) -> None:
    """Every client's train uploads are rounds 1..n once each, in order, writing versions 1..n."""
    train = log[log["phase"] == "train"]
    for cid, n in enumerate(rounds_done):
        mine = train[train.client_id == cid]
        assert list(mine["round"]) == list(range(1, n + 1)), (cid, list(mine["round"]))
        # training starts from the broadcast pretrained model, version 0 for everyone
        assert list(mine["version_written"]) == list(range(1, n + 1)), (cid, list(mine["version_written"]))
