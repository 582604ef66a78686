"""Ray actor names: the dashboard shows what each actor holds (``<run>/clients-0-5``,
``<run>/parameter-server``) instead of a row of identical ``ClientActor``s.

A name must be unique in its Ray namespace, and one Ray session may host several runs (the tests
share one Ray; a sweep's trials share the driver's namespace), so every name starts with the run's
tag. Pure functions: no Ray needed."""

from __future__ import annotations

from collections.abc import Iterable

MAX_LISTED = 8  # a non-contiguous group lists at most this many ids, then "+N"


def actor_prefix(run_tag: str, restart: int = 0) -> str:
    """The run's tag, plus ``.r<k>`` for model-selection restart k (a restart's fresh actors may
    start before the last restart's have released their names)."""
    return run_tag if not restart else f"{run_tag}.r{restart}"


def client_ids_label(client_ids: Iterable[int]) -> str:
    """``0-5`` for a contiguous range, ``0,3,7`` otherwise (long lists are cut: ``0,2,4,...+5``).
    Groups of one run are disjoint, so their labels (which start with the smallest id) differ."""
    ids = sorted(int(c) for c in client_ids)
    if not ids:
        return "none"
    if len(ids) == 1:
        return str(ids[0])
    if ids == list(range(ids[0], ids[-1] + 1)):
        return f"{ids[0]}-{ids[-1]}"
    shown = ",".join(str(c) for c in ids[:MAX_LISTED])
    return shown if len(ids) <= MAX_LISTED else f"{shown},...+{len(ids) - MAX_LISTED}"


def client_actor_name(run_tag: str, client_ids: Iterable[int], restart: int = 0) -> str:
    return f"{actor_prefix(run_tag, restart)}/clients-{client_ids_label(client_ids)}"


def server_actor_name(run_tag: str, restart: int = 0) -> str:
    return f"{actor_prefix(run_tag, restart)}/parameter-server"
