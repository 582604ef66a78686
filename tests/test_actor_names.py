"""Ray actor names say what each actor holds, and two runs (or restarts) never share one."""

from __future__ import annotations

from fedsim.runtime.names import client_actor_name, client_ids_label, server_actor_name


def test_contiguous_and_scattered_groups():
    assert client_actor_name("abc123", [0, 1, 2, 3, 4, 5]) == "abc123/clients-0-5"
    assert client_actor_name("abc123", [7, 3, 0]) == "abc123/clients-0,3,7"
    assert client_actor_name("abc123", [4]) == "abc123/clients-4"
    assert server_actor_name("abc123") == "abc123/parameter-server"


def test_long_scattered_group_is_cut():
    assert client_ids_label(range(0, 40, 2)) == "0,2,4,6,8,10,12,14,...+12"


def test_names_unique_across_runs_restarts_and_groups():
    groups = [[0, 2, 4], [1, 3, 5], [6, 7]]
    names = [client_actor_name(tag, g, r) for tag in ("run1", "run2") for r in (0, 1) for g in groups]
    names += [server_actor_name(tag, r) for tag in ("run1", "run2") for r in (0, 1)]
    assert len(set(names)) == len(names)
    assert server_actor_name("run1", 1) == "run1.r1/parameter-server"
