"""Wall time of one benchmark through the local process pool and through Ray, same parallelism.

Runs ``metarec bench`` as a user types it, once per executor and round (``--rounds``, taking
turns so that a change in the machine's load hits both alike), each into a fresh folder, and
checks that every summary is identical:

    python benchmarks/bench_ray_overhead.py --data-dir ../shared/data            # 2 methods x 5 seeds
    python benchmarks/bench_ray_overhead.py --data-dir ../shared/data --cluster --rounds 3
    python benchmarks/bench_ray_overhead.py --dataset synthetic --seeds 0-1      # a quick try

Executors compared:

* ``local`` -- the default process pool;
* ``ray`` -- ``--executor ray`` without an address: metarec starts a local Ray instance for the
  benchmark and stops it at the end, so its wall time includes Ray's start-up and shut-down;
* ``ray-cluster`` (``--cluster``) -- ``--executor ray --ray-address 127.0.0.1:PORT`` against a
  Ray cluster started *before* the benchmark (``ray start --head --block --node-ip-address
  127.0.0.1``, all its ports on loopback, its own temp folder and token), the setting of issue #18: the
  cluster exists, the benchmark uses it. The script stops that cluster afterwards (only the
  processes it started).

``--breakdown`` also times, in a fresh interpreter, the phases of Ray's fixed cost that a
benchmark pays: ``import ray``, starting a local instance (or connecting to the cluster),
starting the workers and importing torch + metarec in them, putting one split in the object
store and reading it in a task, and shutting down.

Target (issue #18): within 10 % of the local pool. Writes
``benchmarks/results/ray_overhead_<dataset>_<UTC>.json`` with the environment.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from metarec.bench.timing import default_record_path, write_record

METRIC_KEYS = ("cells", "seeds_ok")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


#: Ray reads this at import: every service of a cluster on this machine on 127.0.0.1.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
#: Ray starts workers at niceness 15 unless told otherwise; the local pool's run at 0 (as metarec's
#: own local instance does): on a shared machine the comparison is otherwise one of priorities.
NICENESS_ENV = {"RAY_worker_niceness": "0"}


def without_ray_address() -> dict[str, str]:
    """This environment less ``RAY_ADDRESS``: with it, ``--executor ray`` without ``--ray-address``
    would use that cluster, not the local instance this script measures."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


class LoopbackCluster:
    """``ray start --head --block`` on 127.0.0.1 with its own temp folder and free ports; stopped
    by signalling that process and then ending, by id, the processes that name its temp folder.

    The cluster and its drivers use Ray's token authentication with a token of this cluster's
    own, in its temp folder (``RAY_AUTH_TOKEN_PATH``; :attr:`env`): ``ray start`` with
    ``RAY_AUTH_MODE=token`` refuses to start without a token, and the user's ``~/.ray`` stays
    untouched."""

    def __init__(self, cpus: int) -> None:
        import secrets

        self.temp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # short: Ray's socket paths
        token = self.temp / "auth_token"
        token.touch(mode=0o600)
        token.write_text(secrets.token_hex(32))  # what `ray get-auth-token --generate` writes
        #: What the cluster and every driver of it run with.
        self.env = {**LOOPBACK_ENV, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(token)}
        self.port = free_port()
        ray_cli = Path(sys.executable).parent / "ray"
        cmd = [str(ray_cli), "start", "--head", "--block", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
               "--num-cpus", str(cpus), "--num-gpus", "0", "--include-dashboard", "false", "--disable-usage-stats",
               "--temp-dir", str(self.temp), "--ray-client-server-port", str(free_port()),
               "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
               "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     env={**without_ray_address(), **self.env, **NICENESS_ENV, "OMP_NUM_THREADS": "1"})
        self.log: list[str] = []
        for line in self.proc.stdout:  # "--block" prints this once every process is up
            self.log.append(line)
            if "will now block forever" in line:
                break
        else:
            self.proc.wait(timeout=30)
            shutil.rmtree(self.temp, ignore_errors=True)
            raise SystemExit("ray start failed:\n" + "".join(self.log[-30:]))
        self.start_s = time.perf_counter() - t0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _ours(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit() or int(entry.name) == os.getpid():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(self.temp) in cmdline:
                pids.append(int(entry.name))
        return pids

    def stop(self) -> float:
        t0 = time.perf_counter()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            pids = self._ours()
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + 10
            while pids and time.monotonic() < deadline and self._ours():
                time.sleep(0.2)
        shutil.rmtree(self.temp, ignore_errors=True)
        return time.perf_counter() - t0


PHASES = r"""
import json, os, sys, time
t = {}
t0 = time.perf_counter()
import ray
t["import_ray_s"] = time.perf_counter() - t0
from metarec.bench.ray_executor import connect, _warm_task
from metarec.bench.config import resolve_config
from metarec.bench.run import load_bench_split
address = sys.argv[1] or None
t0 = time.perf_counter()
connect(address, num_cpus=int(sys.argv[2]))
t["start_or_connect_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
@ray.remote(num_cpus=1)
def noop():
    return os.getpid()
ray.get([noop.remote() for _ in range(int(sys.argv[2]))])
t["first_tasks_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
ray.get([ray.remote(_warm_task).options(num_cpus=1).remote(()) for _ in range(int(sys.argv[2]))])
t["worker_imports_wall_s"] = time.perf_counter() - t0  # torch + metarec in every worker, in parallel
cfg = resolve_config({"bench": json.loads(sys.argv[3])})
split = load_bench_split(cfg, cfg.seeds[0])
t0 = time.perf_counter()
ref = ray.put(split)
t["put_split_s"] = time.perf_counter() - t0
@ray.remote(num_cpus=1)
def touch(s):
    return len(s.train)
t0 = time.perf_counter()
ray.get(touch.remote(ref))
t["get_split_in_task_s"] = time.perf_counter() - t0
t0 = time.perf_counter()
ray.shutdown()
t["shutdown_s"] = time.perf_counter() - t0
print("PHASES " + json.dumps(t))
"""


def breakdown(args: argparse.Namespace, cluster: LoopbackCluster | None) -> dict:
    bench = {"dataset": args.dataset, "seeds": [0], "methods": args.methods.split(",")}
    if args.data_dir:
        bench["data_dir"] = args.data_dir
    t0 = time.perf_counter()
    address = cluster.address if cluster is not None else None
    env = {**without_ray_address(), **(cluster.env if cluster is not None else LOOPBACK_ENV), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", PHASES, address or "", str(args.jobs), json.dumps(bench)],
                          capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("PHASES ")), None)
    if line is None:
        sys.exit(f"breakdown failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    phases = json.loads(line[len("PHASES "):])
    phases["interpreter_total_s"] = wall
    return phases


def one_bench(executor: str, args: argparse.Namespace, out: Path,
              cluster: LoopbackCluster | None = None) -> tuple[float, dict]:
    metarec = Path(sys.executable).parent / "metarec"
    cmd = [str(metarec), "bench", "--methods", args.methods, "--dataset", args.dataset, "--seeds", args.seeds,
           "--jobs", str(args.jobs), "--threads", "1", "--no-progress", "--out", str(out),
           "--executor", "ray" if executor.startswith("ray") else executor]
    if cluster is not None:
        cmd += ["--ray-address", cluster.address]
    if args.data_dir:
        cmd += ["--data-dir", args.data_dir]
    t0 = time.perf_counter()
    env = {**without_ray_address(), **(cluster.env if cluster is not None else {}), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"{executor} bench failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    results = json.loads((out / "results.json").read_text())
    summary = {m: {k: e.get(k) for k in METRIC_KEYS} for m, e in results["methods"].items()}
    return wall, {"summary": summary, "results_wall_time_s": results["wall_time_s"],
                  "data_checksum": (results.get("dataset") or {}).get("checksum"),
                  "runs": len(results["runs"]), "nodes": sorted({json.dumps(r.get("node", {}).get("ray_node_id"))
                                                                 for r in results["runs"]})}


def build_record(args: argparse.Namespace, argv: list[str] | None, walls: dict[str, list[float]],
                 details: dict[str, list[dict]], phases: dict[str, dict], cluster_info: dict) -> dict:
    """The JSON record of what has been measured so far (written after every benchmark)."""
    done = {k: v for k, v in walls.items() if v}
    best = {k: min(v) for k, v in done.items()}
    first = details["local"][0] if details["local"] else {}
    same = bool(first) and all(d["summary"] == first["summary"] for k in details for d in details[k])
    record = {
        "what": "wall time of `metarec bench` through the local process pool vs Ray (a local instance metarec "
                "starts and stops; a cluster started before the benchmark), same --jobs",
        "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
        "dataset": args.dataset, "methods": args.methods, "seeds": args.seeds, "jobs": args.jobs,
        "rounds": args.rounds, "complete": all(len(v) == args.rounds for v in walls.values()),
        "runs_per_bench": first.get("runs"),
        "data_checksum": first.get("data_checksum"),
        "wall_s": walls, "best_wall_s": best,
        "summaries_identical": same,
        "bench_wall_time_s": {k: [d["results_wall_time_s"] for d in v] for k, v in details.items()},
        "phases_s": phases,
        "ray_worker_niceness": 0,  # metarec's local instance and the pre-started cluster (Ray's default: 15)
        "cluster": cluster_info,
    }
    if "local" in best:
        record["ratio_to_local"] = {k: best[k] / best["local"] for k in best if k != "local"}
        record["overhead_percent"] = {k: 100.0 * (best[k] / best["local"] - 1.0) for k in best if k != "local"}
        if "ray" in best:  # the figure of the first version of this script
            record["ray_over_local"] = best["ray"] / best["local"]
    return record


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--dataset", default="ml-1m")
    parser.add_argument("--data-dir", default=os.environ.get("METAREC_DATA_DIR"))
    parser.add_argument("--methods", default="global-mean,baseline-predictor")
    parser.add_argument("--seeds", default="0-4")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--cluster", action="store_true",
                        help="also run against a Ray cluster started before the benchmarks (on 127.0.0.1)")
    parser.add_argument("--no-instance", action="store_true",
                        help="skip the local-instance ray runs (with --cluster: local vs the cluster only)")
    parser.add_argument("--breakdown", action="store_true", help="also time the phases of Ray's fixed cost")
    parser.add_argument("--out", help="JSON path [default: benchmarks/results/ray_overhead_<dataset>_<UTC>.json]")
    args = parser.parse_args(argv)
    if args.no_instance and not args.cluster:
        parser.error("--no-instance leaves only the local pool: add --cluster")
    import ray

    load_before = os.getloadavg()
    out = Path(args.out) if args.out else default_record_path(f"ray_overhead_{args.dataset}")
    work = Path(tempfile.mkdtemp(prefix="ray-overhead-"))
    kinds = ["local"] + ([] if args.no_instance else ["ray"]) + (["ray-cluster"] if args.cluster else [])
    walls: dict[str, list[float]] = {k: [] for k in kinds}
    details: dict[str, list[dict]] = {k: [] for k in kinds}
    phases: dict[str, dict] = {}
    cluster = None
    cluster_info: dict = {}

    def save() -> Path:  # after every measurement: a run stopped midway keeps what it measured
        return write_record(build_record(args, argv, walls, details, phases, cluster_info), out,
                            device=torch.device("cpu"), load_before=load_before,
                            extra_environment={"ray": ray.__version__})

    try:
        if args.cluster:
            cluster = LoopbackCluster(args.jobs)
            cluster_info["start_s"] = cluster.start_s
            print(f"pre-started cluster at {cluster.address} ({cluster.start_s:.1f} s to start)", flush=True)
        if args.breakdown:
            if not args.no_instance:
                phases["ray"] = breakdown(args, None)
                print(f"breakdown, local instance: {json.dumps(phases['ray'])}", flush=True)
            if cluster is not None:
                phases["ray-cluster"] = breakdown(args, cluster)
                print(f"breakdown, pre-started cluster: {json.dumps(phases['ray-cluster'])}", flush=True)
        for r in range(args.rounds):
            for kind in (kinds if r % 2 == 0 else kinds[::-1]):
                wall, info = one_bench(kind, args, work / f"{kind}-{r}", cluster if kind == "ray-cluster" else None)
                walls[kind].append(wall)
                details[kind].append(info)
                print(f"round {r} {kind}: {wall:.1f} s", flush=True)
                save()
    finally:
        if cluster is not None:
            cluster_info["stop_s"] = cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    path = save()
    record = build_record(args, argv, walls, details, phases, cluster_info)
    best = record["best_wall_s"]
    ratios = ", ".join(f"{k} {best[k]:.1f} s ({best[k] / best['local']:.3f} x)" for k in best if k != "local")
    print(f"local {best['local']:.1f} s; {ratios}; summaries identical: {record['summaries_identical']}; wrote {path}")
    return 0 if record["summaries_identical"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
