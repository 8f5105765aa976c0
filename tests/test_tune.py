"""``metarec tune``: real Optuna studies on synthetic data (journal file, TPE, pruning, resume)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

optuna = pytest.importorskip("optuna")

from metarec.bench.config import resolve_config  # noqa: E402
from metarec.bench.results import read_json  # noqa: E402
from metarec.cli import main  # noqa: E402
from metarec.registry import register_learner, unregister_learner  # noqa: E402
from metarec.tuning.run import run_tune  # noqa: E402
from metarec.tuning.study import TuneConfig, TuneError, with_pool  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SYNTH = {"n_users": 160, "n_items": 80}


def _cfg(methods, trials=4, **tune) -> TuneConfig:
    bench = with_pool(resolve_config({"bench": {"methods": methods, "dataset": "synthetic", "synthetic": SYNTH,
                                                "threads": 1, "epochs": 2, "progress": False}}))
    return TuneConfig(bench=bench, trials=trials, startup_trials=2, **tune)


def _quiet():
    from rich.console import Console

    return Console(stderr=True, quiet=True)


def _trials(out: Path, method: str) -> list[dict]:
    return read_json(out / method / "trials.json")["trials"]


def test_same_seed_gives_the_same_trials_and_best_settings(tmp_path):
    rows = []
    for run in ("a", "b"):
        rows.append(run_tune(_cfg(("baseline-predictor", "profile-mlp")), out=tmp_path / run, console=_quiet()))
    for m in ("baseline-predictor", "profile-mlp"):
        a, b = _trials(tmp_path / "a", m), _trials(tmp_path / "b", m)
        assert [(t["params"], t["state"], t["value"]) for t in a] == [(t["params"], t["state"], t["value"]) for t in b]
        assert len(a) == 4 and len({json.dumps(t["params"], sort_keys=True) for t in a}) == 4
    assert [r["best_settings"] for r in rows[0]] == [r["best_settings"] for r in rows[1]]
    # another seed draws other settings
    other = run_tune(_cfg(("baseline-predictor",), seed=1), out=tmp_path / "c", console=_quiet())
    assert [t["params"] for t in _trials(tmp_path / "c", "baseline-predictor")] != \
        [t["params"] for t in _trials(tmp_path / "a", "baseline-predictor")]
    assert other[0]["trials"] == 4


def test_outputs_best_toml_is_a_bench_config_with_provenance(tmp_path):
    out = tmp_path / "t"
    (row,) = run_tune(_cfg(("profile-mlp",), trials=3), out=out, console=_quiet())
    assert {p.name for p in (out / "profile-mlp").iterdir()} >= {"best.toml", "trials.csv", "trials.json", "history.png"}
    csv_lines = (out / "profile-mlp" / "trials.csv").read_text().splitlines()
    assert len(csv_lines) == 4 and csv_lines[0].startswith("number,state,value")
    from metarec.bench.config import layer_from_file

    cfg = resolve_config(layer_from_file(out / "best.toml"))
    assert cfg.methods == ("profile-mlp",) and cfg.protocol["tuning_fraction"] == 0.1
    overrides = cfg.settings_for("profile-mlp").overrides
    assert {k: overrides[k] for k in row["best_settings"]} == {
        k: (v if not isinstance(v, list) else v) for k, v in row["best_settings"].items()}
    assert overrides["epochs"] == 2  # fixed values are written with the drawn ones
    prov = cfg.provenance["profile-mlp"]
    assert prov["source"] == "tuned" and prov["trials"] == 3 and prov["budget"] == 3 and prov["pool_users"] == 16
    assert row["overhead"]["trials_timed"] == 3 and 0 < row["overhead"]["overhead_fraction"] < 1


def _flaky_learner():
    """A learner whose trials fail when they draw ``item_reg`` above 50 (and diverge below 1)."""
    import torch

    from metarec.methods.simple import BaselinePredictor

    class Flaky(BaselinePredictor):
        name = "test-flaky"
        search_space = {"item_reg": {"type": "float", "low": 0.1, "high": 100.0, "log": True}}

        def _fit(self, train):
            if self.config.item_reg > 50:
                raise RuntimeError("CUDA out of memory (simulated)")
            super()._fit(train)
            if self.config.item_reg < 1:
                self.mu = torch.tensor(float("nan"))

    return Flaky


def test_a_failing_trial_is_recorded_and_the_study_goes_on(tmp_path):
    register_learner("test-flaky")(_flaky_learner())
    try:
        (row,) = run_tune(_cfg(("test-flaky",), trials=12), out=tmp_path / "t", console=_quiet())
    finally:
        unregister_learner("test-flaky")
    trials = _trials(tmp_path / "t", "test-flaky")
    assert len(trials) == 12 and row["trials"] == 12
    failed = [t for t in trials if t["state"] == "FAIL"]
    oom = [t for t in failed if "out of memory" in t["error"]]
    nan = [t for t in failed if "NaN" in t["error"]]
    assert oom and all(t["params"]["item_reg"] > 50 for t in oom)
    assert nan and all(t["params"]["item_reg"] < 1 for t in nan)
    assert row["complete"] == 12 - len(failed) > 0 and row["failed"] == len(failed)
    assert row["best_settings"]["item_reg"] <= 50
    assert "RuntimeError: CUDA out of memory (simulated)" in row["errors"]


def test_pruning_stops_trials_that_fall_behind(tmp_path):
    cfg = _cfg(("profile-mlp",), trials=8)
    cfg.bench.epochs = 4  # fixed, so every trial reports four epochs unless pruned
    run_tune(cfg, out=tmp_path / "t", console=_quiet())
    trials = _trials(tmp_path / "t", "profile-mlp")
    pruned = [t for t in trials if t["state"] == "PRUNED"]
    assert pruned, [t["value"] for t in trials]
    assert all(t["epochs_done"] < 4 for t in pruned)
    assert all(len(t["history"]) == t["epochs_done"] for t in trials)
    # Optuna's time is measured for pruned trials too (the overhead figure covers every trial)
    timing = {t["trial"]: t for t in read_json(tmp_path / "t" / "profile-mlp" / "timing-worker0.json")["trials"]}
    assert all(timing[t["number"]]["pruning_s"] > 0 and timing[t["number"]]["suggest_s"] > 0 for t in pruned)


SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    import torch
    torch.set_num_threads(1)
    from rich.console import Console
    from metarec.bench.config import resolve_config
    from metarec.methods.simple import ProfileMLP
    from metarec.registry import register_learner
    from metarec.tuning.run import run_tune
    from metarec.tuning.study import TuneConfig, with_pool

    @register_learner("test-slow")
    class Slow(ProfileMLP):
        search_space = {"lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}

        def meta_fit(self, train, **kw):
            marker = os.environ["MARKER_DIR"]
            n = len(os.listdir(marker))
            open(os.path.join(marker, f"fit-{n}"), "w").close()
            time.sleep(float(os.environ.get("SLEEP", "0")) if n >= 1 else 0)
            return super().meta_fit(train, **kw)

    bench = with_pool(resolve_config({"bench": {"methods": ["test-slow"], "dataset": "synthetic",
        "synthetic": {"n_users": 160, "n_items": 80}, "threads": 1, "epochs": 1, "progress": False}}))
    cfg = TuneConfig(bench=bench, trials=4, startup_trials=2)
    run_tune(cfg, out=sys.argv[1], resume=sys.argv[2] == "resume", console=Console(stderr=True, quiet=True))
    """
)


def test_sigkill_mid_trial_then_resume_completes_the_budget(tmp_path):
    script = tmp_path / "tune_script.py"
    script.write_text(SCRIPT)
    out, marker = tmp_path / "t", tmp_path / "markers"
    marker.mkdir()
    env = {**os.environ, "MARKER_DIR": str(marker), "SLEEP": "120", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(script), str(out), "new"], env=env, cwd=REPO)
    try:
        deadline = time.time() + 120
        while len(list(marker.iterdir())) < 2:  # trial 0 finished, trial 1 is inside meta_fit
            assert proc.poll() is None, "the tune ended before it could be killed"
            assert time.time() < deadline, "the second trial never started"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "optuna.log")))
    before = optuna.load_study(study_name="test-slow", storage=storage).get_trials()
    assert [t.state.name for t in before] == ["COMPLETE", "RUNNING"]

    env["SLEEP"] = "0"
    subprocess.run([sys.executable, str(script), str(out), "resume"], env=env, cwd=REPO, check=True, timeout=300)
    trials = _trials(out, "test-slow")
    done = [t for t in trials if t["state"] in ("COMPLETE", "PRUNED", "FAIL") and not t["interrupted"]]
    assert len(done) == 4
    (lost,) = [t for t in trials if t["interrupted"]]
    assert lost["number"] == 1 and lost["state"] == "FAIL"
    retry = [t for t in trials if t["retry_of"] == 1]
    assert len(retry) == 1 and retry[0]["params"] == lost["params"]  # the interrupted settings ran again
    summary = read_json(out / "summary.json")["methods"][0]
    assert summary["trials"] == 4 and summary["interrupted"] == 1
    assert len(read_json(out / "tune.json")["invocations"]) == 1  # the killed invocation never finished


def test_resume_refuses_changed_settings_and_raises_the_budget(tmp_path):
    out = tmp_path / "t"
    run_tune(_cfg(("baseline-predictor",), trials=2), out=out, console=_quiet())
    with pytest.raises(TuneError, match="already holds a tune"):
        run_tune(_cfg(("baseline-predictor",), trials=2), out=out, console=_quiet())
    with pytest.raises(TuneError, match="metric: 'mae' -> 'ndcg'"):
        run_tune(_cfg(("baseline-predictor",), trials=2, metric="ndcg"), out=out, resume=True, console=_quiet())
    (row,) = run_tune(_cfg(("baseline-predictor",), trials=3), out=out, resume=True, console=_quiet())
    assert row["trials"] == 3 and len(_trials(out, "baseline-predictor")) == 3


def test_a_resumed_study_draws_new_settings_not_copies_of_its_first_trials(tmp_path):
    """A resumed driver used to restart the sampler's seeded stream: its random start-up draws
    repeated trials 0, 1, ... setting for setting, and spent the budget on copies."""
    out = tmp_path / "t"
    cfg = lambda n: TuneConfig(bench=_cfg(("profile-mlp",)).bench, trials=n, startup_trials=6)  # noqa: E731
    run_tune(cfg(2), out=out, console=_quiet())
    run_tune(cfg(4), out=out, resume=True, console=_quiet())
    keys = [json.dumps(t["params"], sort_keys=True) for t in _trials(out, "profile-mlp")]
    assert len(keys) == 4 and len(set(keys)) == 4
    # a fresh study keeps its stream: its first two trials are the ones the resumed study began with
    run_tune(cfg(2), out=tmp_path / "fresh", console=_quiet())
    assert [json.dumps(t["params"], sort_keys=True) for t in _trials(tmp_path / "fresh", "profile-mlp")] == keys[:2]


def test_recovering_interrupted_trials_queues_each_unscored_setting_once():
    from metarec.tuning.study import recover_interrupted

    study = optuna.create_study()
    done = study.ask()
    done.suggest_float("x", 0.0, 1.0)
    study.tell(done, 0.5)
    running = []
    for x in (0.25, 0.25, done.params["x"]):  # two copies of one setting, one already scored
        study.enqueue_trial({"x": x})
        t = study.ask()
        t.suggest_float("x", 0.0, 1.0)
        running.append(t.number)
    assert recover_interrupted(study) == {running[0]: True, running[1]: False, running[2]: False}
    queued = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [(t.system_attrs["fixed_params"], t.user_attrs["retry_of"]) for t in queued] == [({"x": 0.25}, running[0])]
    assert all(study.trials[n].user_attrs["interrupted"] for n in running)
    from metarec.tuning.run import _interrupted_note

    assert _interrupted_note({2: True, 4: False}) == ("trial(s) #2, #4 were interrupted; the settings of #2 run again; "
                                                      "#4 repeated settings already scored or queued, not run again")


def test_parallel_workers_share_one_study(tmp_path):
    cfg = _cfg(("baseline-predictor",), trials=4)
    cfg.bench.jobs = 2
    (row,) = run_tune(cfg, out=tmp_path / "t", console=_quiet())
    trials = _trials(tmp_path / "t", "baseline-predictor")
    assert len(trials) == 4 and row["complete"] == 4  # the budget is exact: workers count under a lock
    # which worker ran which trial depends on process start-up times; none ran outside the study
    assert {t["worker"] for t in trials} <= {0, 1} and sorted(t["number"] for t in trials) == [0, 1, 2, 3]


def test_cli_tune_then_bench_tuned_records_the_source_and_never_tests_pool_users(tmp_path):
    runner = CliRunner()
    tune_dir, bench_dir = tmp_path / "tune", tmp_path / "bench"
    common = ["--dataset", "synthetic", "--set", "synthetic.n_users=160", "--set", "synthetic.n_items=80"]
    r = runner.invoke(main, ["tune", "-m", "baseline-predictor", "--trials", "3", *common, "--threads", "1",
                             "--out", str(tune_dir), "--no-progress"], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "best pool mae" in r.output and "3/3" in r.output
    r = runner.invoke(main, ["bench", "--tuned", str(tune_dir), "-m", "baseline-predictor,global-mean", *common,
                             "--seeds", "0-1", "--n-boot", "20", "--threads", "1", "--out", str(bench_dir),
                             "--no-progress"])
    assert r.exit_code == 0, r.output
    results = read_json(bench_dir / "results.json")
    src = results["methods"]["baseline-predictor"]["settings_source"]
    assert src["kind"] == "tuned" and src["study"] == "baseline-predictor" and src["trials"] == 3
    assert results["methods"]["global-mean"]["settings_source"]["kind"] == "defaults"
    assert results["protocol"]["tuning_fraction"] == 0.1
    assert "tuned" in (bench_dir / "summary.md").read_text()
    # pool users are in no seed's predictions
    from metarec.data.protocol import ProtocolConfig, build_split
    from metarec.data.synthetic import make_synthetic

    split = build_split(make_synthetic(**SYNTH), ProtocolConfig(tuning_fraction=0.1), seed=0)
    pool_ids = {str(split.tuning.users.ids[i]) for i in split.tuning.user_index.tolist()}
    tested = {line.split(",")[2] for line in (bench_dir / "predictions.csv").read_text().splitlines()[1:]}
    assert tested and not pool_ids & tested

    r = runner.invoke(main, ["report", str(tune_dir)], env={"COLUMNS": "250"})
    assert r.exit_code == 0, r.output
    assert "baseline-predictor" in r.output and "best settings" in r.output
    # a bench that would test pool users is refused
    r = runner.invoke(main, ["bench", "--tuned", str(tune_dir), *common, "--set", "protocol.tuning_fraction=0.2",
                             "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and "tuning_fraction" in r.output and "Traceback" not in r.output


@pytest.mark.parametrize(
    "args,match",
    [
        (["--trials", "2"], "name the methods to tune"),
        (["-m", "global-mean", "--tuning-fraction", "0"], "0<x<1|range"),
        (["-m", "global-mean", "--trials-for", "melu=3"], "not being tuned: melu"),
        (["-m", "global-mean", "--set", "global-mean.clip_predictions=true"], "nothing to tune"),
        (["-m", "no-such-method"], "unknown learner 'no-such-method'"),
        (["--resume", "--out", "nowhere"], "holds no tune.json"),
        # the executor options are bench's, validated by the same bench config
        (["-m", "baseline-predictor", "--ray-address", "auto"], "ray_address only applies with executor"),
        (["-m", "baseline-predictor", "--executor", "ray", "--gpus-per-run", "-1"], "-1"),
        (["-m", "baseline-predictor", "--storage-port", "70000"], "70000"),
    ],
)
def test_cli_errors_are_one_line(args, match, tmp_path):
    r = CliRunner().invoke(main, ["tune", "--dataset", "synthetic", "--out", str(tmp_path / "o"), *args]
                           if "--out" not in args else ["tune", *args])
    assert r.exit_code != 0
    assert "Traceback" not in r.output
    import re

    assert re.search(match, r.output), r.output


def test_pool_score_presets_scores_a_preset_exactly_as_a_trial(tmp_path, capsys):
    """benchmarks/pool_score_presets.py, given a study's best settings, reproduces its best value:
    the hand-vs-tuned comparison it makes is on the same pool, split and seed as the trials."""
    import importlib.util

    out = tmp_path / "tune"
    (row,) = run_tune(_cfg(("baseline-predictor",), trials=3), out=out, console=_quiet())
    spec = importlib.util.spec_from_file_location("pool_score_presets", REPO / "benchmarks" / "pool_score_presets.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    sets = [f"baseline-predictor.{k}={v!r}" for k, v in row["best_settings"].items()]
    assert script.main([str(out), "baseline-predictor=default", *[a for s in sets for a in ("--set", s)]]) == 0
    (tuned,) = read_json(out / "pool-presets.json")["rows"]
    assert tuned["value"] == pytest.approx(row["best_value"], abs=1e-12)
    assert tuned["tuned_best"] == pytest.approx(row["best_value"])
    # two presets of one method in one call; Koren's shrinkage scores otherwise
    assert script.main([str(out), "baseline-predictor=koren", "baseline-predictor=default"]) == 0
    koren, default = read_json(out / "pool-presets.json")["rows"]
    assert (koren["preset"], default["preset"]) == ("koren", "default") and koren["value"] != default["value"]
    # each row keeps the settings its preset resolved to, so that a later change of the preset is caught
    from metarec.registry import get_learner

    for k, v in get_learner("baseline-predictor").presets["koren"].items():
        assert koren["settings"][k] == v, k
    # a --set for a method that is not scored is a one-line error, not a silent no-op
    assert script.main([str(out), "baseline-predictor=koren", "--set", "melu.inner_lr=0.1"]) == 2
    assert "melu" in capsys.readouterr().err


def test_a_trial_whose_local_worker_dies_is_interrupted_and_runs_again(tmp_path, monkeypatch):
    """``--jobs 2``: trials in local worker processes; one kills its process (``os._exit``)."""
    import tuneplugins  # tests/: importable by the forked workers too

    monkeypatch.setenv("METAREC_TEST_MARKERS", str(tmp_path))
    register_learner("test-ray-kills-once")(tuneplugins.KillsItsWorkerOnce)
    try:
        cfg = _cfg(("test-ray-kills-once",), trials=4)
        cfg.bench.jobs = 2
        (row,) = run_tune(cfg, out=tmp_path / "t", console=_quiet())
    finally:
        unregister_learner("test-ray-kills-once")
    assert (tmp_path / "killed-once").exists()
    trials = _trials(tmp_path / "t", "test-ray-kills-once")
    (lost,) = [t for t in trials if t["interrupted"]]
    assert lost["state"] == "FAIL" and "WorkerDied" in lost["error"] and "exited with code 9" in lost["error"]
    (retry,) = [t for t in trials if t["retry_of"] == lost["number"]]
    assert retry["params"] == lost["params"] and retry["state"] == "COMPLETE"
    assert row["trials"] == 4 and row["interrupted"] == 1 and len(trials) == 5


def test_a_tune_folder_in_use_refuses_a_second_driver(tmp_path):
    """Two drivers on one study corrupt it (the second's --resume finishes the first's running
    trials): the folder is locked for the lifetime of a driver, and released after it."""
    from metarec.bench.rundir import OutDirLock, OutDirLocked

    out = tmp_path / "t"
    cfg = _cfg(("global-mean",), trials=2)
    run_tune(cfg, out=out, console=_quiet())
    with OutDirLock(out, what="metarec tune"):  # another driver holds the folder
        with pytest.raises(OutDirLocked, match=r"t is in use by another metarec tune \(pid \d+ on host"):
            run_tune(_cfg(("global-mean",), trials=3), out=out, resume=True, console=_quiet())
    assert len(_trials(out, "global-mean")) == 2  # nothing ran under the holder
    run_tune(_cfg(("global-mean",), trials=3), out=out, resume=True, console=_quiet())  # free again: raises the budget
    assert len(_trials(out, "global-mean")) == 3


def test_wall_time_leaves_out_the_time_a_resumed_study_lay_stopped():
    from datetime import datetime, timedelta

    from metarec.tuning.outputs import active_seconds

    t0 = datetime(2026, 12, 2, 22, 0, 0)

    def at(s: float) -> datetime:
        return t0 + timedelta(seconds=s)

    assert active_seconds([]) is None
    # one go, trials back to back (Optuna's work between them counts): first start to last end
    assert active_seconds([(at(0), at(100)), (at(100.5), at(250))]) == 250
    # parallel workers: overlapping trials are counted once
    assert active_seconds([(at(0), at(100)), (at(10), at(150)), (at(150.2), at(200))]) == 200
    # stopped overnight, resumed: the ten hours between the sessions are not study time
    assert active_seconds([(at(0), at(100)), (at(36_100), at(36_150))]) == 150
    assert active_seconds([(at(0), at(100)), (at(130), at(150))], idle_gap_s=10) == 120
