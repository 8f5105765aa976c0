"""The Ray executor on a real multi-node Ray cluster on this machine (loopback only).

Ray's own ``ray.cluster_utils.Cluster`` starts a head node (no CPUs: it only schedules) and two
worker nodes of one CPU each, as separate raylet processes; the benchmark's driver connects to
it exactly as it would to a remote cluster. The checks: local and Ray executors give
bit-identical predictions and metrics; runs are spread over both worker nodes (each run record
names its node); removing a worker node mid-benchmark loses no finished run and the rest
completes; a worker process killed with SIGKILL is retried, and recorded as failed with its cause
once the retries are used up, while a method that raises is isolated as locally; Ctrl-C in the
driver cancels the tasks still running and leaves a folder that ``--resume`` completes; a driver
killed mid-benchmark leaves a folder that ``--resume`` completes.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console

from metarec.bench.config import resolve_config
from metarec.bench.runner import run_bench
from metarec.registry import register_learner, unregister_learner

# A single-machine cluster: every Ray service on 127.0.0.1, never the host's outward address.
# Ray reads this when it is first imported, so it is set before the import.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="the Ray tests need Ray: pip install 'metarec[ray]'")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SYNTH = {"n_users": 150, "n_items": 120, "seed": 0}
METHODS = ["global-mean", "profile-mlp"]
SEEDS = [0, 1, 2]


def quiet() -> Console:
    return Console(file=open(os.devnull, "w"), stderr=False)


def config(**bench):
    base = {
        "dataset": "synthetic", "synthetic": SYNTH, "seeds": SEEDS, "methods": METHODS, "n_boot": 50,
        "progress": False, "threads": 1, "jobs": 2,
    }
    base.update(bench)
    return resolve_config({"bench": base, "methods": {"profile-mlp": {"epochs": 3}}})


def run_files(out: Path) -> dict[str, dict]:
    return {p.name: json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))}


def comparable(results: dict) -> dict:
    """Every number of the methods' summaries (not timings, nodes or paths)."""
    return {m: {k: v for k, v in e.items() if k in ("cells", "metrics", "overall", "scenarios", "seeds_ok")}
            for m, e in results["methods"].items()}


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    """The session's loopback cluster (tests/conftest.py): head + two one-CPU worker nodes."""
    return ray_cluster


@pytest.fixture(scope="module")
def local_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "run"
    results = run_bench(config(), out=out, console=quiet())
    return out, results


def test_ray_equals_local_and_spreads_over_nodes(cluster, local_run, tmp_path):
    c, workers = cluster
    local_out, local_results = local_run
    out = tmp_path / "ray"
    results = run_bench(config(executor="ray"), out=out, console=quiet())
    assert all(r["status"] == "ok" for r in results["runs"]), [r.get("error") for r in results["runs"]]
    assert (out / "predictions.csv").read_bytes() == (local_out / "predictions.csv").read_bytes()
    assert comparable(results) == comparable(local_results)
    for name, rec in run_files(out).items():
        assert rec["metrics"] == run_files(local_out)[name]["metrics"]
    nodes = {r["node"]["ray_node_id"] for r in results["runs"]}
    worker_ids = {w.node_id for w in workers}
    assert nodes <= worker_ids and len(nodes) == 2, nodes
    assert results["environment"]["executor"] == "ray"


def test_node_removed_mid_benchmark_loses_nothing(cluster, local_run, tmp_path):
    c, workers = cluster
    local_out, local_results = local_run
    out = tmp_path / "ray-kill"
    removed: list[str] = []

    def kill_a_node_after_first_run() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((out / "runs").glob("*.json")):
            time.sleep(0.05)
        victim = workers[-1]
        c.remove_node(victim, allow_graceful=False)  # kill -9 of the node's raylet and workers
        removed.append(victim.node_id)

    killer = threading.Thread(target=kill_a_node_after_first_run, daemon=True)
    killer.start()
    cfg = config(executor="ray", retries=3)
    results = run_bench(cfg, out=out, console=quiet())
    killer.join(timeout=60)
    try:
        assert removed, "the node was never removed"
        failed = [r for r in results["runs"] if r["status"] != "ok"]
        if failed:  # retries used up on an unlucky schedule: the folder must still complete on resume
            results = run_bench(cfg, out=out, resume=True, console=quiet())
        assert all(r["status"] == "ok" for r in results["runs"])
        assert (out / "predictions.csv").read_bytes() == (local_out / "predictions.csv").read_bytes()
        assert comparable(results) == comparable(local_results)
    finally:
        workers[-1] = c.add_node(num_cpus=1)  # the next test gets two worker nodes again
        c.wait_for_nodes()


@contextlib.contextmanager
def registered(*classes):
    """Register test learners of tests/tuneplugins.py (importable on every node) for one test."""
    for cls in classes:
        register_learner(cls.name)(cls)
    try:
        yield
    finally:
        for cls in classes:
            unregister_learner(cls.name)


def test_dead_workers_are_retried_then_failed_and_a_raising_method_is_isolated(cluster, local_run, tmp_path):
    import tuneplugins as tp

    local_out, _ = local_run
    out = tmp_path / "ray-faults"
    methods = ["global-mean", tp.Raises.name, tp.SigkillsOnce.name, tp.SigkillsAlways.name]
    with registered(tp.Raises, tp.SigkillsOnce, tp.SigkillsAlways):
        results = run_bench(config(executor="ray", methods=methods, seeds=[0], retries=1), out=out, console=quiet())
    runs = {r["method"]: r for r in results["runs"]}
    # the healthy method is untouched by its neighbours
    assert runs["global-mean"]["status"] == "ok"
    assert runs["global-mean"]["metrics"] == run_files(local_out)["global-mean__seed0.json"]["metrics"]
    # a method that raises: a failed run with its traceback, inside the task, as locally
    raised = run_files(out)[f"{tp.Raises.name}__seed0.json"]
    assert raised["status"] == "failed" and raised["failure"]["kind"] == "exception"
    assert "this method always fails" in raised["error"] and "RuntimeError" in raised["traceback"]
    # kill -9 of the worker on the first attempt: Ray retried it, and the retry trained normally
    once = runs[tp.SigkillsOnce.name]
    assert (Path(os.environ["METAREC_TEST_MARKERS"]) / "bench-sigkilled-once").exists()
    assert once["status"] == "ok" and once["metrics"] == runs["global-mean"]["metrics"]
    # kill -9 on every attempt: failed with its cause once the one retry is used up
    always = run_files(out)[f"{tp.SigkillsAlways.name}__seed0.json"]
    assert always["status"] == "failed"
    assert always["failure"]["kind"] == "ray" and always["failure"]["retries"] == 1
    assert always["error"].startswith("WorkerDied: the Ray task failed after 1 retry ("), always["error"]


def _holds_plugin(site: Path) -> Path:
    """tests/tuneplugins.py's Holds declared by an installed distribution, for a driver in a
    subprocess. The entry point names ``tuneplugins:Holds`` itself: a Ray task imports its
    learner from that ``module:attr`` on its node, where tuneplugins is importable."""
    from faultplugins import write_distribution
    import tuneplugins as tp

    site = write_distribution(site, "metarec-ray-test-plugins", "0.1", "metarec_ray_test_plugins", "", {})
    (next(site.glob("*.dist-info")) / "entry_points.txt").write_text(
        f"[metarec.learners]\n{tp.Holds.name} = tuneplugins:Holds\n")
    return site


# `metarec` as an interactive shell starts it. A process that a non-interactive shell starts in
# the background (`make test &`) ignores SIGINT, its children inherit that, and Python then
# leaves SIGINT ignored: the driver sets Python's own handler itself before the CLI runs (set in
# the child, not by a preexec_fn in this multi-threaded test process).
_INTERACTIVE_CLI = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                    "runpy.run_module('metarec.cli', run_name='__main__', alter_sys=True)")


def test_ctrl_c_cancels_running_tasks_and_resume_completes(cluster, tmp_path):
    """A real Ctrl-C (SIGINT) to `metarec bench --executor ray` while a run holds its worker: the
    driver says how to resume and exits 130 without a traceback, the held task is cancelled (the
    cluster gets its CPU back), no record is written for it, and --resume completes the folder.
    The driver is a subprocess, as a user's is: this test once interrupted its own process
    (_thread.interrupt_main), and a CI run lost the whole pytest process during it with nothing
    reported; a driver that dies here is a failing test that shows the driver's output."""
    import tuneplugins as tp

    c, _ = cluster
    marks = Path(os.environ["METAREC_TEST_MARKERS"])
    hold, holding = marks / "hold", marks / "holding"
    hold.write_text("")
    holding.unlink(missing_ok=True)
    out = tmp_path / "ray-ctrl-c"
    site = _holds_plugin(tmp_path / "site")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(REPO / "tests"), str(REPO)])}
    cmd = [
        sys.executable, "-c", _INTERACTIVE_CLI, "bench", "-d", "synthetic", "-m", f"global-mean,{tp.Holds.name}",
        "--seeds", "0,1", "--threads", "1", "--jobs", "2", "--no-progress", "--executor", "ray",
        "--ray-address", c.address, "--out", str(out), "--set", f"synthetic={json.dumps(SYNTH).replace(':', ' =')}",
        "--set", "n_boot=50",
    ]
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 300
        while not (holding.exists() and (out / "runs" / "global-mean__seed0.json").exists()):
            if driver.poll() is not None or time.monotonic() > deadline:
                what = f"ended with {driver.returncode}" if driver.poll() is not None else "had no held run after 300 s"
                driver.kill()
                pytest.fail(f"the driver {what}:\n" + driver.communicate()[0])
            time.sleep(0.05)
        held_pid = int(holding.read_text())
        driver.send_signal(signal.SIGINT)
        output = driver.communicate(timeout=120)[0]
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
        hold.unlink(missing_ok=True)
    assert driver.returncode == 130, output
    assert "Traceback" not in output, output
    assert "interrupted" in output and f"metarec bench --resume --out {out}" in " ".join(output.split()), output
    # the held run would never end on its own before its 600 s deadline: only a cancelled task
    # gives the cluster its two CPUs back and ends the worker process that ran it
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and (ray.available_resources().get("CPU", 0) < 2 or _alive(held_pid)):
        time.sleep(0.2)
    assert ray.available_resources().get("CPU", 0) == 2, ray.available_resources()
    assert not _alive(held_pid), f"the worker that ran the held task (pid {held_pid}) still runs"
    assert f"{tp.Holds.name}__seed0.json" not in run_files(out) and not (out / "results.json").exists()

    resume = subprocess.run(cmd[:4] + ["--resume", "--out", str(out), "--executor", "ray", "--ray-address", c.address,
                                       "--no-progress"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert resume.returncode == 0, resume.stdout + resume.stderr
    results = json.loads((out / "results.json").read_text())
    runs = {(r["method"], r["seed"]): r for r in results["runs"]}
    assert len(runs) == 4 and all(r["status"] == "ok" for r in runs.values())
    for seed in (0, 1):
        assert runs[(tp.Holds.name, seed)]["metrics"] == runs[("global-mean", seed)]["metrics"]


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (a zombie counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_resume_after_driver_killed(cluster, local_run, tmp_path):
    c, workers = cluster
    local_out, local_results = local_run
    out = tmp_path / "ray-driver"
    cmd = [
        sys.executable, "-m", "metarec.cli", "bench", "-d", "synthetic", "-m", ",".join(METHODS),
        "--seeds", ",".join(map(str, SEEDS)), "--threads", "1", "--jobs", "2", "--no-progress",
        "--executor", "ray", "--ray-address", c.address, "--out", str(out),
        "--set", f"synthetic={json.dumps(SYNTH).replace(':', ' =')}", "--set", "n_boot=50",
        "--set", "profile-mlp.epochs=3",
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not list((out / "runs").glob("*.json")):
            if driver.poll() is not None:
                pytest.fail("driver ended early:\n" + driver.stdout.read().decode())
            time.sleep(0.05)
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=60)
    done_before = set(run_files(out))
    assert done_before and len(done_before) < len(METHODS) * len(SEEDS)
    # the tasks the dead driver owned are cleaned up by Ray; resume runs what has no record --
    # on the cluster named by $RAY_ADDRESS (Ray's convention) when --ray-address is not given
    resume = subprocess.run(
        [sys.executable, "-m", "metarec.cli", "bench", "--resume", "--out", str(out), "--executor", "ray",
         "--no-progress"],
        cwd=tmp_path, env={**env, "RAY_ADDRESS": c.address}, capture_output=True, text=True, timeout=600,
    )
    assert resume.returncode == 0, resume.stdout + resume.stderr
    results = json.loads((out / "results.json").read_text())
    assert all(r["status"] == "ok" for r in results["runs"]) and len(results["runs"]) == 6
    worker_ids = {w.node_id for w in workers}
    resumed = [r for r in results["runs"] if f"{r['method']}__seed{r['seed']}.json" not in done_before]
    assert resumed and all(r["node"]["ray_node_id"] in worker_ids for r in resumed)
    assert (out / "predictions.csv").read_bytes() == (local_out / "predictions.csv").read_bytes()
    assert comparable(results) == comparable(local_results)


def test_ray_missing_is_one_line(tmp_path):
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from metarec.cli import main\n"
        "sys.argv = ['metarec', 'bench', '-d', 'synthetic', '-m', 'global-mean', '--seeds', '0', '--executor', 'ray',"
        " '--no-progress', '--out', 'r']\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines[-1].endswith("pip install 'metarec[ray]'"), proc.stderr


def _raylets() -> set[int]:
    pids = set()
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and b"raylet" in (entry / "cmdline").read_bytes().split(b"\0")[0]:
                pids.add(int(entry.name))
        except OSError:
            pass
    return pids


def test_overhead_script_runs_the_local_instance_and_stops_it(tmp_path):
    """`metarec bench --executor ray` with no address (the local instance metarec starts and
    stops), through benchmarks/bench_ray_overhead.py as the merger runs it: the same summary as
    the local pool, a record with its environment, and no Ray process left behind. Run with the
    session's cluster up, it also checks that the instance is a new one, not the cluster that
    ray.init() would join by default (the latest one started on this machine)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("bench_ray_overhead", REPO / "benchmarks" / "bench_ray_overhead.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    before = _raylets()
    out = tmp_path / "overhead.json"
    rc = script.main(["--dataset", "synthetic", "--methods", "global-mean", "--seeds", "0-1", "--jobs", "1",
                      "--out", str(out)])
    assert rc == 0
    record = json.loads(out.read_text())
    assert record["summaries_identical"] and record["complete"]
    assert {k: len(v) for k, v in record["wall_s"].items()} == {"local": 1, "ray": 1}
    assert record["runs_per_bench"] == 2 and record["data_checksum"]
    assert record["environment"]["ray"] == ray.__version__ and "overhead_percent" in record
    assert _raylets() <= before  # the instance's raylet stopped with its benchmark
