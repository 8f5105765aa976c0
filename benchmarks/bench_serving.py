"""Serving latency of fitted models: one new user adapted and the whole catalogue scored.

For each model folder (written by ``metarec fit``):

1. **in-process**: ``model.recommend`` for one new user with ``--ratings`` ratings (the support
   sets of the protocol's test users, one user per call, cycling) scoring every catalogue item
   (``exclude_rated=False``, so all 3,316 ML-1M items), ``--repeats`` calls after ``--warmup``;
   p50/p90/p99 of the wall time per call;
2. **over HTTP**: ``metarec serve`` started as a subprocess on a loopback port (``--workers``
   inference threads, default 1, ``--threads`` torch threads, concurrent requests micro-batched
   up to ``--max-batch``) and ``--clients`` concurrent clients (a load generator on bare asyncio
   HTTP/1.1 keep-alive connections, :func:`load_raw`, or httpx with ``--load-client httpx``, with
   exactly that many requests in flight) for ``--duration`` seconds, each request a
   ``POST /recommend`` of the same kind of user with ``k = 10``; latency percentiles, errors (any
   status other than 200, an answer that is not a recommendation, or a transport error),
   throughput and the server's batch sizes.

Latency does not depend on how long a model was trained (the same network is evaluated), so
the models may be fitted with few epochs. The load generator runs on the same machine as the
server and shares its cores; the load average before and after is in the record::

    python benchmarks/bench_serving.py --data-dir ../shared/data models/mamo models/melu models/profile-mlp-finetune

The JSON goes to ``benchmarks/results/serving_<data>_cpu_<time>.json``. Each in-process entry
holds the **floor** (:func:`floor`): where a call's CPU time goes -- the adaptation, the
catalogue's scoring, a batch of users per user, and the torch operators dispatched. With
``--floor-only`` the script measures only that (``--repeats`` calls each, no HTTP) and writes
``serving_floor_<data>_cpu_<time>.json``::

    python benchmarks/bench_serving.py --floor-only --repeats 40 --data-dir ../shared/data models/mamo models/melu models/profile-mlp-finetune
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from metarec.bench.timing import default_record_path, write_record

REPO = Path(__file__).resolve().parents[1]


def percentiles(seconds: list[float]) -> dict[str, float]:
    """p50/p90/p99/mean/max in milliseconds."""
    ms = np.asarray(seconds) * 1000.0
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "max_ms": float(ms.max()), "n": int(ms.size)}


def new_users(model, data_dir: str | None, n_ratings: int, n_users: int, seed: int) -> list[dict]:
    """Request bodies of new users: protocol test users' profiles and first ratings (ML-1M), or
    random catalogue items with random ratings when no data folder is given."""
    from metarec.serving.catalogue import decode_user

    users = []
    if data_dir:
        from metarec.data import load_split

        test = load_split("ml-1m", data_dir=data_dir, seed=seed).test
        for i in range(min(n_users, len(test))):
            task = test[i]
            ratings = list(zip(task.support_item_ids, task.support_ratings.tolist()))[:n_ratings]
            users.append({"user": decode_user(test.schema, test.users, int(test.user_index[i])),
                          "ratings": [{"item": it, "rating": float(r)} for it, r in ratings]})
        return users
    rng = np.random.default_rng(seed)
    ids = list(model.catalogue.ids)
    lo, hi = model.rating_range
    for _ in range(n_users):
        items = rng.choice(len(ids), size=n_ratings, replace=False)
        users.append({"user": {}, "ratings": [{"item": ids[j], "rating": float(rng.integers(int(lo), int(hi) + 1))} for j in items]})
    return users


def in_process(model, users: list[dict], repeats: int, warmup: int) -> dict:
    """Wall time of ``model.recommend`` over the whole catalogue, one user per call."""
    def call(u):
        return model.recommend(user=u["user"], ratings=[(r["item"], r["rating"]) for r in u["ratings"]], k=10,
                               exclude_rated=False)

    for n in range(warmup):
        call(users[n % len(users)])
    times, cpu = [], []
    scored = None
    for n in range(repeats):
        u = users[n % len(users)]
        t0, c0 = time.perf_counter(), time.thread_time()
        rec = call(u)
        times.append(time.perf_counter() - t0)
        cpu.append(time.thread_time() - c0)
        scored = rec.n_candidates
    # The learner's own adapt_and_predict on the same users' prebuilt batches, interleaved with
    # the calls above' kind of load: the serving path's overhead is the difference (a ratio
    # measured in one run, which a busy machine distorts less than the absolute times).
    batches = []
    for u in users[: min(len(users), 50)]:
        req = model._prepare({"user": u["user"], "ratings": [(r["item"], r["rating"]) for r in u["ratings"]]},
                             "error", "", items_key="candidates")
        batches.append(model.build_batch([req]))
    learner_only = []
    for n in range(repeats):
        b = batches[n % len(batches)]
        t0 = time.perf_counter()
        with model.no_grad():
            model.learner.postprocess(model.learner.adapt_and_predict(b))
        learner_only.append(time.perf_counter() - t0)
    # CPU time of the calling thread (torch runs its ops there with 1 thread): what the call
    # costs whatever else the machine is doing -- wall time on a shared machine includes waits
    lo = percentiles(learner_only)
    wall = percentiles(times)
    return {**wall, "cpu_time": percentiles(cpu), "learner_adapt_and_predict_only": lo,
            "serving_overhead_p50_fraction": (wall["p50_ms"] - lo["p50_ms"]) / wall["p50_ms"],
            "floor": floor(model, users, max(20, repeats // 5)),
            "items_scored": scored, "ratings_per_user": len(users[0]["ratings"])}


def floor(model, users: list[dict], repeats: int, batch: int = 16) -> dict:
    """Where a call's time goes, for any learner, in CPU time of the learner's own
    ``adapt_and_predict`` on prebuilt batches (p50, ms):

    * ``adapt_one_item``: the same user with one query item -- the adaptation (and fixed costs);
    * ``score_catalogue`` = the whole catalogue minus that: scoring 3,315 more items;
    * ``batch_per_user``: ``batch`` users adapted and scored in one call, per user -- what
      micro-batching concurrent requests can reach;
    * ``ops_*``: the torch operators each of these calls dispatches (forward and backward, from
      the profiler), and ``cpu_us_per_op``: their CPU time per operator -- with tensors this small
      a call costs about its operator count times a fixed dispatch cost, whatever the method;
      ``trivial_op_us`` is that cost for an in-place add on one number, the machine's floor.
    """
    def prepared(u, items=None):
        return model._prepare({"user": u["user"], "ratings": [(r["item"], r["rating"]) for r in u["ratings"]],
                               **({"candidates": items} if items is not None else {})}, "error", "", items_key="candidates")

    def cpu_p50(make_batch, n: int) -> float:
        with model.no_grad():
            model.learner.adapt_and_predict(make_batch(0))
            times = []
            for k in range(n):
                b = make_batch(k)
                c0 = time.thread_time()
                model.learner.adapt_and_predict(b)
                times.append(time.thread_time() - c0)
        return float(np.median(times) * 1000)

    first = [model.catalogue.ids[0]]
    full = [model.build_batch([prepared(u)]) for u in users[:20]]
    one = [model.build_batch([prepared(u, first)]) for u in users[:20]]
    cycled = [users[j % len(users)] for j in range(2 * batch)]  # fewer users than 2 batches: reuse them
    many = [model.build_batch([prepared(u) for u in cycled[j : j + batch]]) for j in (0, batch)]
    whole, adapt = cpu_p50(lambda k: full[k % len(full)], repeats), cpu_p50(lambda k: one[k % len(one)], repeats)
    batched = cpu_p50(lambda k: many[k % 2], max(5, repeats // 4)) / batch
    ops_whole, ops_adapt = op_count(model, full[0]), op_count(model, one[0])
    return {"whole_catalogue_cpu_ms": whole, "adapt_one_item_cpu_ms": adapt, "score_catalogue_cpu_ms": whole - adapt,
            "batch_per_user_cpu_ms": batched, "batch": batch,
            "ops_whole_catalogue": ops_whole, "ops_adapt_one_item": ops_adapt, "ops_batch": op_count(model, many[0]),
            "cpu_us_per_op_whole_catalogue": whole * 1000 / ops_whole, "cpu_us_per_op_adapt_one_item": adapt * 1000 / ops_adapt,
            "trivial_op_us": trivial_op_us()}


def op_count(model, batch) -> int:
    """Torch operators one ``adapt_and_predict`` call dispatches: profiler ``aten::`` events with no
    ``aten::`` event above them (an operator's own sub-operators are not counted again)."""
    from torch.profiler import ProfilerActivity, profile

    with model.no_grad(), profile(activities=[ProfilerActivity.CPU]) as prof:
        model.learner.adapt_and_predict(batch)

    def top(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return False
            p = p.cpu_parent
        return True

    return sum(1 for e in prof.events() if e.name.startswith("aten::") and top(e))


def trivial_op_us(n: int = 20000) -> float:
    """CPU microseconds of ``x.add_(1)`` on a one-element tensor: the per-operator dispatch cost."""
    import torch

    x = torch.zeros(1)
    with torch.inference_mode():
        for _ in range(1000):
            x.add_(1)
        c0 = time.thread_time()
        for _ in range(n):
            x.add_(1)
        return (time.thread_time() - c0) * 1e6 / n


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), from /proc (None elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


async def load(url: str, users: list[dict], clients: int, duration: float, client: str = "raw") -> dict:
    """``clients`` loops posting /recommend back to back for ``duration`` s (bounded: one request
    each in flight): :func:`load_raw` (default) or :func:`load_httpx`."""
    fn = load_raw if client == "raw" else load_httpx
    return await fn(url, users, clients, duration)


def _bodies(users: list[dict]) -> list[bytes]:
    return [json.dumps({**u, "k": 10, "exclude_rated": False}).encode() for u in users]


async def load_raw(url: str, users: list[dict], clients: int, duration: float) -> dict:
    """The load generator on bare asyncio streams: one HTTP/1.1 keep-alive connection per client,
    request bodies encoded once, each response read in full (status line, headers, the body by
    its ``Content-Length`` or chunks) and checked (status 200, a JSON object with ``items``).

    Each request is timed from before its first byte is written to after its last byte is read.
    It does what httpx does on the wire at a fraction of the CPU, which matters when the load
    generator shares the server's cores (both CPU times are in the record).
    """
    host, port = url.split("://", 1)[1].rsplit(":", 1)
    bodies = _bodies(users)
    heads = [(f"POST /recommend HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
              f"Content-Length: {len(b)}\r\n\r\n").encode() + b for b in bodies]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    start = time.perf_counter()
    deadline = start + duration

    def error(key: str) -> None:
        errors[key] = errors.get(key, 0) + 1

    async def client(n: int) -> None:
        reader = writer = None
        k = n
        try:
            while time.perf_counter() < deadline:
                request = heads[k % len(heads)]
                k += clients
                t0 = time.perf_counter()
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(host, int(port))
                    writer.write(request)
                    status, body, close = await asyncio.wait_for(_read_response(reader), 30)
                    ok = status == 200 and body[:1] == b"{" and b'"items"' in body
                    key = f"http_{status}" if status != 200 else "bad_body"
                except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
                    ok, key, close = False, type(exc).__name__, True
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    error(key)
                if close and writer is not None:
                    writer.close()
                    reader = writer = None
        finally:
            if writer is not None:
                writer.close()

    await asyncio.gather(*(client(n) for n in range(clients)))
    wall = time.perf_counter() - start
    return {**percentiles(latencies), "requests": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "wall_s": wall, "throughput_rps": len(latencies) / wall, "clients": clients,
            "load_generator": "raw asyncio HTTP/1.1, keep-alive"}


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """``(status, body, connection closes)`` of one HTTP/1.1 response."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, value = line.split(":", 1)
            headers[name.strip().lower()] = value.strip()
    if "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif headers.get("transfer-encoding", "").lower() == "chunked":
        parts = []
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            parts.append(await reader.readexactly(size + 2))
            if size == 0:
                break
        body = b"".join(p[:-2] for p in parts)
    else:
        raise ValueError("response without Content-Length or chunked encoding")
    return status, body, headers.get("connection", "").lower() == "close"


async def load_httpx(url: str, users: list[dict], clients: int, duration: float) -> dict:
    """The same loops through ``httpx.AsyncClient`` (the load generator of earlier records)."""
    import httpx

    latencies: list[float] = []
    errors: dict[str, int] = {}
    bodies = _bodies(users)
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as c:
        start = time.perf_counter()
        deadline = start + duration

        async def client(n: int) -> None:
            k = n
            while time.perf_counter() < deadline:
                body = bodies[k % len(bodies)]
                k += clients
                t0 = time.perf_counter()
                try:
                    r = await c.post("/recommend", content=body, headers=headers)
                    ok = r.status_code == 200
                    key = f"http_{r.status_code}"
                except httpx.HTTPError as exc:
                    ok, key = False, type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                if not ok:
                    errors[key] = errors.get(key, 0) + 1

        await asyncio.gather(*(client(n) for n in range(clients)))
        wall = time.perf_counter() - start
    return {**percentiles(latencies), "requests": len(latencies), "errors": sum(errors.values()),
            "error_kinds": errors, "wall_s": wall, "throughput_rps": len(latencies) / wall, "clients": clients,
            "load_generator": "httpx.AsyncClient"}


def over_http(model_dir: str, users: list[dict], args) -> dict:
    """Start ``metarec serve`` on loopback, warm it up, then run the load generator."""
    import httpx

    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    cmd = [sys.executable, "-m", "metarec.cli", "serve", model_dir, "--port", str(port), "--workers", str(args.workers),
           "--threads", str(args.threads), "--max-batch", str(args.max_batch), "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"metarec serve exited: {proc.stderr.read()}")
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.time() > deadline:
                raise RuntimeError("metarec serve did not start within 120 s")
            time.sleep(0.2)
        for u in users[: args.warmup]:
            httpx.post(f"{url}/recommend", json={**u, "k": 10, "exclude_rated": False}, timeout=30).raise_for_status()
        before = httpx.get(f"{url}/health", timeout=10).json()
        server0, client0 = process_cpu_s(proc.pid), time.process_time()
        result = asyncio.run(load(url, users, args.clients, args.duration, args.load_client))
        server1, client1 = process_cpu_s(proc.pid), time.process_time()
        after = httpx.get(f"{url}/health", timeout=10).json()
        # CPU per request, server (HTTP + model) and load generator: what 2 shared cores must
        # supply per request whatever else runs -- throughput <= cores / their sum
        n = max(result["requests"], 1)
        result["server_cpu_ms_per_request"] = None if server0 is None else (server1 - server0) * 1000 / n
        result["load_generator_cpu_ms_per_request"] = (client1 - client0) * 1000 / n
        calls = after["batches"] - before["batches"]
        result["model_calls"] = calls
        result["mean_batch_size"] = (after["batched_requests"] - before["batched_requests"]) / calls if calls else None
        result["server_command"] = " ".join(cmd[1:])
        return result
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("models", nargs="+", help="model folders written by `metarec fit`")
    p.add_argument("--data-dir", default=None, help="folder holding ml-1m/ (new users = the protocol's test users)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (in-process and in the server)")
    p.add_argument("--ratings", type=int, default=15, help="ratings of each new user")
    p.add_argument("--users", type=int, default=200, help="distinct new users cycled through")
    p.add_argument("--repeats", type=int, default=300, help="timed in-process calls per model")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--clients", type=int, default=16, help="concurrent HTTP clients")
    p.add_argument("--workers", type=int, default=1, help="inference threads of the server")
    p.add_argument("--max-batch", type=int, default=16, help="the server's micro-batch limit (1 = one request per model call)")
    p.add_argument("--duration", type=float, default=30.0, help="seconds of HTTP load per model")
    p.add_argument("--load-client", choices=("raw", "httpx"), default="raw",
                   help="the load generator: bare asyncio HTTP/1.1 (default, least CPU) or httpx.AsyncClient")
    p.add_argument("--skip-http", action="store_true")
    p.add_argument("--floor-only", action="store_true",
                   help="measure only where a call's time goes (the floor: CPU times and operator counts); implies --skip-http")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON path (default: benchmarks/results/serving_<data>_cpu_<time>.json)")
    args = p.parse_args(argv)
    if min(args.threads, args.clients, args.repeats, args.workers, args.max_batch) < 1 or args.duration <= 0:
        p.error("--threads, --clients, --repeats, --workers and --max-batch must be >= 1 and --duration > 0")
    load_before = os.getloadavg()
    import torch

    torch.set_num_threads(args.threads)
    from metarec.serving import load_model

    kind = "serving_floor" if args.floor_only else "serving"
    out = Path(args.out) if args.out else default_record_path(f"{kind}_{'ml-1m' if args.data_dir else 'random'}_cpu")
    record = {"format": "metarec-serving-bench-1", "what": __doc__.split("\n\n")[0],
              "command": " ".join(["python", *sys.argv]), "settings": vars(args), "models": []}
    for folder in args.models:
        model = load_model(folder)
        users = new_users(model, args.data_dir, args.ratings, args.users, args.seed)
        card = model.card
        entry = {"folder": folder, "method": model.method, "preset": card.get("preset"),
                 "epochs": card.get("config", {}).get("epochs"), "catalogue_items": len(model.catalogue),
                 "grad_mode": model.grad_mode, "data_checksum": card.get("dataset", {}).get("checksum"),
                 "load_average_at_start": list(os.getloadavg())}
        if args.floor_only:
            print(f"{model.method}: floor ...", file=sys.stderr)
            entry["floor"] = floor(model, users, args.repeats)
            entry["load_average_at_end"] = list(os.getloadavg())
            record["models"].append(entry)
            path = write_record(record, out, device=torch.device("cpu"), load_before=load_before,
                                extra_environment={"note": "shared machine: other jobs ran during the measurement; see the load averages"})
            print(json.dumps(entry["floor"]), file=sys.stderr)
            continue
        print(f"{model.method}: in-process ...", file=sys.stderr)
        entry["in_process"] = in_process(model, users, args.repeats, args.warmup)
        print(f"  p50 {entry['in_process']['p50_ms']:.1f} ms, p99 {entry['in_process']['p99_ms']:.1f} ms "
              f"({entry['in_process']['items_scored']} items)", file=sys.stderr)
        if not args.skip_http:
            print(f"{model.method}: HTTP, {args.clients} clients for {args.duration:g} s ...", file=sys.stderr)
            entry["http"] = over_http(folder, users, args)
            h = entry["http"]
            print(f"  p50 {h['p50_ms']:.1f} ms, p99 {h['p99_ms']:.1f} ms, {h['throughput_rps']:.1f} req/s, "
                  f"{h['errors']} errors, mean batch {h['mean_batch_size'] or 0:.1f}", file=sys.stderr)
        entry["load_average_at_end"] = list(os.getloadavg())
        record["models"].append(entry)
        path = write_record(record, out, device=torch.device("cpu"), load_before=load_before,
                            extra_environment={"note": "shared machine: other jobs ran during the measurement; see the load averages"})
    if args.floor_only:
        print(f"record: {path}", file=sys.stderr)
        return 0
    print(json.dumps({m["method"]: {"in_process_p50_ms": round(m["in_process"]["p50_ms"], 2),
                                    "in_process_p99_ms": round(m["in_process"]["p99_ms"], 2),
                                    **({"http_p99_ms": round(m["http"]["p99_ms"], 1), "http_rps": round(m["http"]["throughput_rps"], 1),
                                        "http_errors": m["http"]["errors"]} if "http" in m else {})}
                      for m in record["models"]}, indent=1))
    print(f"record: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
