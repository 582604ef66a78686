"""A client's state between rounds (optimiser, buffers, the method's own) is kept with its upload
and restored into a fresh actor: the restored client's next rounds equal the uninterrupted
ones bit for bit, for every method. No Ray: the actor class is used as a plain class."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from fedsim.config import build_config
from fedsim.methods import method_names
from fedsim.methods.base import PeerModel
from fedsim.runtime.client import ClientActor
from fedsim.runtime.server import Snapshot, StoreEntry
from tests.conftest import SMALL_SYNTHETIC

SUPERVISED = {"fedavg", "fedprox", "fedopt", "fedrecon"}


def _config(method: str) -> dict:
    raw = {k: v for k, v in SMALL_SYNTHETIC.items() if k != "afmcc"} | {"method": method, "rounds": 4}
    if method == "afmcc":
        raw["afmcc"] = SMALL_SYNTHETIC["afmcc"]
    if method == "cmmc":  # the stages' epochs add up to the rounds; fine-tuning (pseudo-targets) from round 3
        raw["cmmc"] = {"pretrain_epochs": 1, "contrastive_epochs": 1, "finetune_epochs": 2}
    if method == "fmcsc":  # the code's widths and epochs take minutes; the state kept is the same
        raw["fmcsc"] = {"hidden": [32, 32], "head_width": 16, "main_epochs": 2, "distill_epochs": 2}
    overrides = ["task=classification"] if method in SUPERVISED else []
    return build_config(raw, overrides).model_dump(mode="json")


def _round(actor: ClientActor, round_: int, params: np.ndarray, seq: int, state, client: int = 0):
    """Client ``client``'s round ``round_`` with every peer holding ``params``; the state as Ray
    passes it (pickled), so nothing aliases the sender's tensors."""
    u = actor.cfg.num_clients
    own = actor.clients[client].data
    snapshot = Snapshot(
        tuple(StoreEntry(c, round_ - 1, tuple(own.modalities), None, own.n_samples) for c in range(u)),
        0,
        ((seq, None),) * u,
    )
    passed = None if state is None else pickle.loads(pickle.dumps(state))
    average = actor.clients[client].average
    if average is None:  # peer aggregation: every peer's upload
        downloads = [params] * u
    else:  # the server's average of the snapshot, beside the client's own upload
        peers = [PeerModel(c, round_ - 1, own.modalities, torch.from_numpy(params), own.n_samples) for c in range(u)]
        values, taken, weights = average.average(peers)
        downloads = [params, (values.numpy(), taken, weights)]
    out, info, after = actor.run_round(client, round_, snapshot, False, 1.0, seq, passed, *downloads)
    return out.copy(), info["losses"], after


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", method_names())
def test_restored_client_continues_exactly(method):
    cfg = _config(method)
    first = ClientActor(cfg, [0])
    init = first.initial_parameters(0)
    outs, losses, states = [init], [], [None]
    for r in range(1, 5):
        out, loss, state = _round(first, r, outs[-1], r - 1, states[-1])
        outs.append(out)
        losses.append(loss)
        states.append(pickle.loads(pickle.dumps(state)))
    # a fresh actor (as Ray makes after a kill) continues after round k from the kept state, and
    # then from its own state, in memory
    for k in (2, 3):
        restarted = ClientActor(cfg, [0])
        out, seq, state = outs[k], k, states[k]
        for r in range(k + 1, 5):
            out, loss, state = _round(restarted, r, out, seq, state)
            assert loss == losses[r - 1], (k, r)
            np.testing.assert_array_equal(out, outs[r])
            seq, state = r, None
    # a round re-run on the same actor (its first run's upload was lost) restores too
    again, loss_again, _ = _round(first, 3, outs[2], 2, states[2])
    assert loss_again == losses[2]
    np.testing.assert_array_equal(again, outs[3])
    # and so does a client sent back to before its first round
    fresh, loss_fresh, _ = _round(first, 1, init, 0, None)
    assert loss_fresh == losses[0]
    np.testing.assert_array_equal(fresh, outs[1])


@pytest.mark.timeout(600)
@pytest.mark.parametrize("method", ["afmcc", "msdib", "cmmc"])
def test_an_actor_keeping_one_model_trains_like_one_keeping_all(method):
    """``runtime.resident_clients: 1``: two clients take turns on one actor, so each round
    rebuilds the client's model and restores its state; every round equals the resident run's."""
    cfg = _config(method)
    bounded = ClientActor({**cfg, "runtime": {**cfg["runtime"], "resident_clients": 1}}, [0, 1])
    resident = ClientActor(cfg, [0, 1])
    params = {c: resident.initial_parameters(c) for c in (0, 1)}
    states: dict[int, object] = {0: None, 1: None}
    for r in range(1, 4):
        for c in (0, 1):
            out, loss, state = _round(resident, r, params[c], r - 1, states[c], client=c)
            out_b, loss_b, _ = _round(bounded, r, params[c], r - 1, states[c], client=c)
            assert loss_b == loss, (c, r)
            np.testing.assert_array_equal(out_b, out)
            params[c], states[c] = out, pickle.loads(pickle.dumps(state))
        assert sum(client.model is not None for client in bounded.clients.values()) == 1


def _rounds_side_by_side(actor: ClientActor, params: dict[int, np.ndarray]) -> tuple[dict[int, tuple], int]:
    """Round 1 of clients 0 and 1, handed to ``actor`` from two threads at once (as Ray's task
    threads do); returns the rounds' results and how many trained at the same time at most."""
    import threading
    import time

    inside, most = [0], [0]
    guard = threading.Lock()
    for client in actor.clients.values():

        def counted(*args, _train=client.method.train_round, **kwargs):
            with guard:
                inside[0] += 1
                most[0] = max(most[0], inside[0])
            time.sleep(0.2)  # long enough for the other thread to arrive
            try:
                return _train(*args, **kwargs)
            finally:
                with guard:
                    inside[0] -= 1

        client.method.train_round = counted
    got: dict[int, tuple] = {}
    threads = [
        threading.Thread(target=lambda c=c: got.__setitem__(c, _round(actor, 1, params[c], 0, None, client=c)))
        for c in (0, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return got, most[0]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("slots", [1, 2])
def test_an_actor_computes_one_round_at_a_time_per_slot_and_the_results_do_not_change(slots):
    """A threaded actor's rounds run in its task threads but compute at most ``compute_slots``
    at a time (``cluster.compute_slots``: one per CPU share), since concurrent torch calls in
    one process cost CPU. Rounds handed in together train exactly as rounds one after another."""
    serial = ClientActor(_config("fedavg"), [0, 1])
    params = {c: serial.initial_parameters(c) for c in (0, 1)}
    expected = {c: _round(serial, 1, params[c], 0, None, client=c) for c in (0, 1)}
    got, most = _rounds_side_by_side(ClientActor(_config("fedavg"), [0, 1], compute_slots=slots), params)
    assert most == slots
    for c in (0, 1):
        np.testing.assert_array_equal(got[c][0], expected[c][0])
        assert got[c][1] == expected[c][1]
