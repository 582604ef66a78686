"""The Ray runtime end to end on synthetic data: the three modes, reproducibility, asynchrony,
actor failure, and MLflow tracking."""

from __future__ import annotations

import numpy as np
import pytest

from fedsim.runner import run_experiment


def _train_log(result_log):
    return result_log[result_log["phase"] == "train"]


def _run(cfg):
    outcome = run_experiment(cfg)
    return outcome.summary, outcome.federation


@pytest.mark.parametrize("mode,evaluation", [("sync", "global_kmeans"), ("async", "fmcsc"), ("virtual", "fmcsc")])
def test_each_mode_completes(ray_session, small_config, mode, evaluation):
    out, res = _run(small_config(f"mode={mode}", f"evaluation={evaluation}"))
    assert out["mode"] == mode
    assert res.rounds_done == [3, 3, 3, 3]
    log = _train_log(res.upload_log)
    assert len(log) == 12
    for cid in range(4):
        assert sorted(log[log.client_id == cid]["round"]) == [1, 2, 3]
    assert 0.0 <= out["acc"] <= 1.0 and {"nmi", "ari", "purity"} <= set(out)
    assert len(out["history"]) == 4  # every round (eval_every=1 x 4 clients) and the final one
    assert (res.upload_log["phase"] == "pretrain").sum() == 1
    if mode == "sync":
        # a barrier: every round of the same index read the same snapshot
        for r in (1, 2, 3):
            reads = log[log["round"] == r]["versions_read"].map(tuple)
            assert reads.nunique() == 1


def test_chained_pretraining_passes_one_model_through_every_client(ray_session, small_config):
    # FMCSC's pretraining (pretrain.schedule=chain): clients 0..U-1 train the same model in turn,
    # each starting from the previous one's upload, `pretrain.rounds` rounds each.
    out, res = _run(small_config("pretrain.schedule=chain", "pretrain.rounds=2", "mode=sync"))
    pre = res.upload_log[res.upload_log["phase"] == "pretrain"]
    assert list(pre["client_id"]) == [0, 0, 1, 1, 2, 2, 3, 3]
    # simulated time adds up along the chain: each pretraining round starts where the last ended
    assert list(pre["sim_start"])[1:] == list(pre["sim_end"])[:-1]
    train = _train_log(res.upload_log)
    assert res.rounds_done == [3, 3, 3, 3] and train["sim_start"].min() == pre["sim_end"].max()
    # every client's first round read the chain's end (version 0 everywhere after the broadcast)
    assert all(v == [0, 0, 0, 0] for v in train[train["round"] == 1]["versions_read"])


def test_sequential_round_order_reads_each_predecessors_upload_of_the_round(ray_session, small_config):
    # FMCSC's code loops over its clients: round_order=sequential has client c of round r read the
    # round-r uploads of clients 0..c-1 and the round-(r-1) uploads of the others.
    out, res = _run(small_config("mode=sync", "round_order=sequential"))
    log = _train_log(res.upload_log).sort_values(["round", "client_id"])
    assert res.rounds_done == [3, 3, 3, 3]
    assert list(log["client_id"]) == [0, 1, 2, 3] * 3
    reads = [list(v) for v in log["versions_read"]]
    written = list(log["version_written"])
    for i in range(1, len(reads)):
        previous = i - 1  # the upload just before: its client's entry is the only one that moved
        expected = list(reads[previous])
        expected[int(log["client_id"].iloc[previous])] = written[previous]
        assert reads[i] == expected
    # one after another on the simulated clock
    assert list(log["sim_start"])[1:] == list(log["sim_end"])[:-1]


def test_sequential_round_order_needs_sync_mode(small_config):
    from fedsim.errors import ConfigError

    with pytest.raises(ConfigError, match="round_order=sequential needs mode=sync"):
        small_config("mode=virtual", "round_order=sequential")


def test_virtual_mode_is_bit_for_bit_reproducible(ray_session, small_config):
    """The same config twice gives the same run; the second run also hands one round at a time
    to its single actor, which keeps one model resident (the memory knobs of a large
    federation), and still gives the same run."""
    cfg = small_config("speed_profile=eo:3:1")
    a_out, a = _run(cfg)
    b_out, b = _run(
        small_config(
            "speed_profile=eo:3:1",
            "runtime.rounds_in_flight=1",
            "runtime.resident_clients=1",
            "runtime.clients_per_actor=4",
        )
    )
    for key in ("acc", "nmi", "ari", "purity", "simulated_time"):
        assert a_out[key] == b_out[key]
    cols = ["client_id", "round", "versions_read", "version_written", "sim_start", "sim_end", "staleness"]
    assert a.upload_log[cols].astype(str).equals(b.upload_log[cols].astype(str))
    losses_a = [i["losses"] for i in a.upload_log["info"]]
    losses_b = [i["losses"] for i in b.upload_log["info"]]
    assert losses_a == losses_b
    assert a.assignments.equals(b.assignments)
    # a different seed really is a different run
    c_out, _ = _run(small_config("speed_profile=eo:3:1", "seed=1"))
    assert (
        c_out["simulated_time"] != a_out["simulated_time"]
        or c_out["acc"] != a_out["acc"]
        or c_out["nmi"] != a_out["nmi"]
    )


def test_virtual_mode_does_not_depend_on_actor_placement(ray_session, small_config):
    # The automatic placement follows the machine (free CPUs and memory), so the same config may
    # host its clients on one actor here and on four there: the result must not change with it.
    one_actor_out, one_actor = _run(small_config("speed_profile=eo:3:1", "runtime.clients_per_actor=4"))
    four_actors_out, four_actors = _run(small_config("speed_profile=eo:3:1", "runtime.clients_per_actor=1"))
    assert (one_actor_out["federation"]["actors"], four_actors_out["federation"]["actors"]) == (1, 4)
    for key in ("acc", "nmi", "ari", "purity", "simulated_time"):
        assert one_actor_out[key] == four_actors_out[key], key
    assert [i["losses"] for i in one_actor.upload_log["info"]] == [i["losses"] for i in four_actors.upload_log["info"]]


def test_virtual_eo_ratio_orders_rounds(ray_session, small_config):
    # all clients full-modality, so rounds cost the same work and only the speed differs
    cfg = small_config(
        "speed_profile=eo:3:1",
        "stop.rule=group",
        "stop.group=odd",
        "stop.group_rounds=2",
        "eval_every=0",
        "client_ratio=1:0",
    )
    _, res = _run(cfg)
    even = np.mean([res.rounds_done[c] for c in (0, 2)])
    odd = np.mean([res.rounds_done[c] for c in (1, 3)])
    assert min(res.rounds_done[c] for c in (1, 3)) == 2
    assert 2.5 <= even / odd <= 3.5


def test_async_mode_is_really_asynchronous(ray_session, small_config):
    cfg = small_config(
        "mode=async",
        "speed_profile=eo:3:1",
        "stop.rule=group",
        "stop.group=odd",
        "stop.group_rounds=4",
        "eval_every=0",
        "afmcc.phi=6",
        "client_ratio=1:0",
    )
    out, res = _run(cfg)
    even = np.mean([res.rounds_done[c] for c in (0, 2)])
    odd = np.mean([res.rounds_done[c] for c in (1, 3)])
    assert min(res.rounds_done[c] for c in (1, 3)) >= 2
    # Real time: a slow client sleeps out 2x its *measured* compute, so CPU contention on its
    # rounds is tripled too. Alone this test sees ~3x ([12, 4, 13, 4]); inside the full suite on
    # 2 cores it has seen from 1.75x ([7, 4, 7, 4], a CI run) to 5.9x. The exact 3x is asserted on
    # the virtual clock (test_virtual_eo_ratio_orders_rounds); here: clearly not lock-step (a
    # synchronous run gives 1x), every fast client ahead of every slow one, slow ones not starved.
    assert min(res.rounds_done[c] for c in (0, 2)) > max(res.rounds_done[c] for c in (1, 3)), res.rounds_done
    assert 1.5 <= even / odd <= 10, res.rounds_done
    assert out["mean_staleness"] > 0
    waited = [i["waited_s"] for i, cid in zip(res.upload_log["info"], res.upload_log["client_id"]) if cid % 2 == 1]
    assert np.mean(waited) > 0  # slow clients really wait out their speed


def test_killed_actor_resumes_without_lost_or_doubled_rounds(ray_session, small_config):
    cfg = small_config("fault.kill_client=1", "fault.after_uploads=4", "runtime.clients_per_actor=2")
    out, res = _run(cfg)
    assert out["actor_restarts"] >= 1
    log = _train_log(res.upload_log)
    for cid in range(4):
        rounds = list(log[log.client_id == cid]["round"])
        assert sorted(rounds) == [1, 2, 3], (cid, rounds)
        versions = list(log[log.client_id == cid]["version_written"])
        assert versions == sorted(set(versions))


def test_run_is_tracked_in_mlflow(ray_session, small_config, tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = small_config(f"tracking.tracking_uri={uri}", "tracking.enabled=true", "tracking.experiment=test-exp")
    out = run_experiment(cfg).summary
    client = mlflow.MlflowClient(tracking_uri=uri)
    run = client.get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["afmcc.alpha"] == "0.01" and run.data.params["mode"] == "virtual"
    assert run.data.metrics["final_acc"] == pytest.approx(out["acc"])
    from fedsim.tracking import code_version  # the run names its code: a 40-hex commit here

    assert run.data.tags["fedsim.git_commit"] == code_version() and len(code_version().split("+")[0]) == 40
    history = client.get_metric_history(run.info.run_id, "acc")
    assert len(history) == len(out["history"])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"upload_log.parquet", "assignments.parquet", "config.yaml", "result.json"} <= artifacts


def test_private_uploads_and_argmax_evaluation(ray_session, small_config):
    out, res = _run(small_config("privacy.enabled=true", "privacy.epsilon=40", "evaluation=argmax"))
    train = _train_log(res.upload_log)
    noise = [i["privacy"]["noise_std"] for i in res.upload_log["info"]]  # pretraining uploads are noised too
    assert all(n > 0 for n in noise)
    for _, uploads in res.upload_log.groupby("client_id"):  # one sigma * C per client, for its release bound
        assert len({i["privacy"]["noise_std"] for i in uploads["info"]}) == 1
    # client 0 pretrains (4 releases, the others 3), so it gets more noise per upload
    sigma = [r["noise_multiplier"] for r in out["privacy"]["clients"]]
    assert sigma[0] > sigma[1] == sigma[2] == sigma[3]
    assert [r["releases"] for r in out["privacy"]["clients"]] == [4, 3, 3, 3]
    assert all(i["privacy"]["update_norm"] > 0 for i in train["info"])
    assert 0.0 <= out["acc"] <= 1.0


def test_model_selection_keeps_the_best_of_several_restarts(ray_session, small_config, tmp_path):
    """model_selection.runs trains from different initialisations on the same split and keeps one;
    criterion=acc (the MSDIB/GIB papers' label-using choice) is tagged as such in MLflow."""
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = small_config(
        "model_selection.runs=2",
        "model_selection.criterion=acc",
        "rounds=2",
        f"tracking.tracking_uri={uri}",
        "tracking.enabled=true",
    )
    out = run_experiment(cfg).summary
    sel = out["model_selection"]
    accs = [r["acc"] for r in sel["restarts"]]
    assert [r["restart"] for r in sel["restarts"]] == [0, 1] and sel["uses_labels"]
    assert out["acc"] == max(accs) and sel["chosen"] == int(np.argmax(accs))
    # the runner records the kept restart per criterion; this method has no selection loss
    assert out["selected_by_acc/acc"] == out["acc"] and out["selected_by_acc/restart"] == sel["chosen"]
    assert not any(k.startswith("selected_by_loss/") for k in out)
    # restart 0 is the run without model selection: adding restarts never changes it
    single = run_experiment(small_config("rounds=2")).summary
    assert single["acc"] == pytest.approx(accs[0]) and single["nmi"] == pytest.approx(sel["restarts"][0]["nmi"])
    run = mlflow.MlflowClient(tracking_uri=uri).get_run(out["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["fedsim.selection"] == "acc (uses labels)"
    assert "restart_1/acc" in run.data.metrics


def test_selected_by_keeps_each_criterions_restart():
    """One set of restarts serves both selections: the lowest selection loss and the highest ACC
    (first of ties), each restart's metrics under its criterion's prefix."""
    from fedsim.runner import selected_by

    restarts = [
        {"restart": 0, "acc": 0.5, "nmi": 0.4, "selection_loss": 0.2, "wall_time": 3.0},
        {"restart": 1, "acc": 0.9, "nmi": 0.8, "selection_loss": 0.3, "wall_time": 3.0},
        {"restart": 2, "acc": 0.9, "nmi": 0.7, "selection_loss": 0.1, "wall_time": 3.0},
    ]
    got = selected_by(restarts)
    assert got["selected_by_acc/restart"] == 1 and got["selected_by_acc/nmi"] == 0.8
    assert got["selected_by_loss/restart"] == 2 and got["selected_by_loss/acc"] == 0.9
    assert "selected_by_acc/wall_time" not in got
    assert not any(k.startswith("selected_by_loss/") for k in selected_by([{"restart": 0, "acc": 0.1}]))


def test_label_free_selection_needs_a_selection_loss(small_config):
    from fedsim.errors import ConfigError
    from fedsim.runner import validate

    with pytest.raises(ConfigError, match="selection_loss"):
        validate(small_config("model_selection.runs=3"))
