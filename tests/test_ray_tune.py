"""``metarec tune --executor ray`` on a real multi-node Ray cluster on this machine (loopback).

The cluster is the session's (tests/conftest.py): a head node and two worker nodes of one CPU
each. Trials are Ray tasks; they reach the study (the journal file in the driver's ``--out``)
through Optuna's gRPC storage proxy, which the driver serves on 127.0.0.1. The checks: the
budget is met exactly, trials ran on both worker nodes (each trial records its node), pruning
reports reach the study from the tasks, the best settings are a config ``metarec bench``
reads, a trial that raises is recorded and the study goes on, and a trial whose worker process
dies is recorded as interrupted and its settings run again.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rich.console import Console

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'metarec[ray]'")
optuna = pytest.importorskip("optuna")
pytest.importorskip("grpc", reason="tuning over Ray needs grpcio: pip install 'metarec[ray]'")

from metarec.bench.config import layer_from_file, resolve_config  # noqa: E402
from metarec.bench.results import read_json  # noqa: E402
from metarec.registry import register_learner, unregister_learner  # noqa: E402
from metarec.tuning.run import run_tune  # noqa: E402
from metarec.tuning.study import TuneConfig, with_pool  # noqa: E402

pytestmark = pytest.mark.slow

SYNTH = {"n_users": 160, "n_items": 80}


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), stderr=False)


def tune_cfg(methods, trials, *, epochs=2, **tune) -> TuneConfig:
    bench = with_pool(resolve_config({"bench": {
        "methods": methods, "dataset": "synthetic", "synthetic": SYNTH, "threads": 1, "epochs": epochs,
        "progress": False, "jobs": 2, "executor": "ray", "retries": 1,
    }}))
    return TuneConfig(bench=bench, trials=trials, startup_trials=2, **tune)


def trials_of(out: Path, method: str) -> list[dict]:
    return read_json(out / method / "trials.json")["trials"]


def test_tune_over_ray_meets_the_budget_on_both_nodes(ray_cluster, tmp_path):
    c, workers = ray_cluster
    out = tmp_path / "t"
    rows = run_tune(tune_cfg(("baseline-predictor", "profile-mlp"), trials=6, epochs=3), out=out, console=quiet())
    assert [r["trials"] for r in rows] == [6, 6]
    worker_ids = {w.node_id for w in workers}
    nodes = set()
    for m in ("baseline-predictor", "profile-mlp"):
        trials = trials_of(out, m)
        assert sorted(t["number"] for t in trials) == list(range(6))
        assert all(t["state"] in ("COMPLETE", "PRUNED") for t in trials), [t["error"] for t in trials]
        nodes |= {t["node"]["ray_node_id"] for t in trials}
    assert nodes <= worker_ids and len(nodes) == 2, nodes
    # the per-epoch pool scores reached the study from the tasks (what the pruner reads)
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.log")))
    mlp = optuna.load_study(study_name="profile-mlp", storage=storage).get_trials()
    assert all(len(t.intermediate_values) == t.user_attrs["epochs_done"] >= 1 for t in mlp)
    assert all(t.user_attrs["node"]["ray_node_id"] in worker_ids for t in mlp)
    csv = (out / "profile-mlp" / "trials.csv").read_text().splitlines()
    assert csv[0].startswith("number,state,value,epochs_done,trial_s,worker,node,")
    assert {line.split(",")[6] for line in csv[1:]} <= worker_ids
    # the best settings are a bench config, with where they came from
    cfg = resolve_config(layer_from_file(out / "best.toml"))
    assert cfg.methods == ("baseline-predictor", "profile-mlp")
    for row in rows:
        overrides = cfg.settings_for(row["method"]).overrides
        assert {k: overrides[k] for k in row["best_settings"]} == row["best_settings"]
        assert cfg.provenance[row["method"]]["trials"] == 6
    assert read_json(out / "tune.json")["invocations"][-1]["executor"] == "ray"


def test_a_raising_trial_and_a_dead_worker_over_ray(ray_cluster, tmp_path):
    import tuneplugins

    register_learner("test-ray-flaky")(tuneplugins.Flaky)
    register_learner("test-ray-kills-once")(tuneplugins.KillsItsWorkerOnce)
    try:
        out = tmp_path / "t"
        rows = run_tune(tune_cfg(("test-ray-flaky", "test-ray-kills-once"), trials=8, epochs=1), out=out,
                        console=quiet())
    finally:
        unregister_learner("test-ray-flaky")
        unregister_learner("test-ray-kills-once")
    flaky, killer = rows
    # a trial that raises is a failed trial with its error; the study went on to its budget
    trials = trials_of(out, "test-ray-flaky")
    failed = [t for t in trials if t["state"] == "FAIL"]
    assert len(trials) == 8 and flaky["trials"] == 8
    assert failed and all("out of memory" in t["error"] and t["params"]["item_reg"] > 50 for t in failed)
    assert flaky["complete"] == 8 - len(failed) > 0
    # the trial whose worker died: interrupted, its settings queued again and run to the end
    trials = trials_of(out, "test-ray-kills-once")
    (lost,) = [t for t in trials if t["interrupted"]]
    assert lost["state"] == "FAIL" and "WorkerDied" in lost["error"]
    (retry,) = [t for t in trials if t["retry_of"] == lost["number"]]
    assert retry["params"] == lost["params"] and retry["state"] == "COMPLETE"
    assert killer["trials"] == 8 and killer["interrupted"] == 1
    assert len([t for t in trials if not t["interrupted"]]) == 8
