"""``metarec serve`` for real: uvicorn on a free loopback port, called over HTTP with httpx."""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import pytest

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from metarec.bench.config import resolve_config  # noqa: E402
from metarec.serving import load_model  # noqa: E402
from metarec.serving.fit import fit_model  # noqa: E402
from metarec.serving.http import Limits, create_app  # noqa: E402

LIMITS = Limits(max_body_bytes=20_000, max_ratings=50, max_candidates=100, max_k=20, max_pending=64, workers=1)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    cfg = resolve_config({"bench": {"dataset": "synthetic", "synthetic": {"n_users": 60, "n_items": 40, "seed": 0},
                                    "methods": ["mamo"], "seeds": [0], "n_boot": 10, "threads": 1, "device": "cpu"},
                          "methods": {"mamo": {"epochs": 1}}})
    out = tmp_path_factory.mktemp("http") / "model"
    fit_model(cfg, "mamo", out, seed=0)
    return out


class Running:
    """The real app under uvicorn in a thread, on a loopback socket the OS chose."""

    def __init__(self, model, limits):
        self.model = model
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.srv = uvicorn.Server(uvicorn.Config(create_app(model, limits), log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.srv.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.srv.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)

    def stop(self):
        self.srv.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture(scope="module")
def server(model_dir):
    running = Running(load_model(model_dir), LIMITS)
    yield {"url": running.url, "model": running.model}
    running.stop()


@pytest.fixture
def client(server):
    with httpx.Client(base_url=server["url"], timeout=30) as c:
        yield c


def ratings(model, n=3):
    ids = list(model.catalogue.ids)
    return [{"item": ids[j], "rating": [5, 1, 4, 3, 2][j % 5]} for j in range(n)]


def test_health_model_and_docs(client, server):
    h = client.get("/health").json()
    assert h["status"] == "ok" and h["model"] == "mamo" and h["items"] == len(server["model"].catalogue)
    card = client.get("/model").json()
    assert card["method"] == "mamo" and card["card"]["method"] == "mamo"
    assert card["limits"]["max_k"] == 20 and card["rating_range"] == [1.0, 5.0]
    assert client.get("/docs").status_code == 200
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/recommend", "/predict", "/health", "/model"} <= set(paths)


def test_recommend_and_predict_answer_what_the_model_computes(client, server):
    model = server["model"]
    body = {"user": {}, "ratings": ratings(model), "k": 5}
    r = client.post("/recommend", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    local = model.recommend(user={}, ratings=[(x["item"], x["rating"]) for x in body["ratings"]], k=5)
    assert [i["item"] for i in out["items"]] == local.item_ids
    assert [i["predicted_rating"] for i in out["items"]] == local.predicted
    assert [i["rank"] for i in out["items"]] == [1, 2, 3, 4, 5]
    assert out["n_ratings_used"] == 3
    ids = list(model.catalogue.ids)
    p = client.post("/predict", json={"ratings": body["ratings"], "items": ids[5:8]})
    assert p.status_code == 200, p.text
    assert [x["item"] for x in p.json()["predictions"]] == ids[5:8]
    none = client.post("/recommend", json={"k": 3})  # a user with no profile and no ratings
    assert none.status_code == 200 and none.json()["n_ratings_used"] == 0 and len(none.json()["items"]) == 3


def _detail(r):
    assert r.status_code == 422, r.text
    return r.json()["detail"]


def test_malformed_json_is_422(client):
    r = client.post("/recommend", content=b'{"ratings": [', headers={"content-type": "application/json"})
    d = _detail(r)
    assert d[0]["type"] == "json_invalid" and d[0]["loc"][0] == "body"


def test_wrong_types_name_the_field(client, server):
    d = _detail(client.post("/recommend", json={"k": "ten"}))
    assert d[0]["loc"] == ["body", "k"]
    d = _detail(client.post("/recommend", json={"ratings": [{"item": "i1", "rating": "five"}]}))
    assert any(e["loc"][:4] == ["body", "ratings", 0, "rating"] for e in d)
    d = _detail(client.post("/recommend", json={"ratings": [{"item": "i1"}]}))
    assert d[0]["loc"] == ["body", "ratings", 0, "rating"] and d[0]["type"] == "missing"
    d = _detail(client.post("/recommend", json={"colour": "blue"}))
    assert d[0]["loc"] == ["body", "colour"] and d[0]["type"] == "extra_forbidden"
    d = _detail(client.post("/predict", json={"ratings": []}))
    assert d[0]["loc"] == ["body", "items"]


def test_unknown_items_and_bad_ratings_are_422_naming_them(client, server):
    good = ratings(server["model"], 2)
    d = _detail(client.post("/recommend", json={"ratings": [*good, {"item": "no-such-item", "rating": 4}]}))
    assert d[0]["type"] == "unknown_item" and d[0]["loc"] == ["body", "ratings", 2, "item"]
    assert "'no-such-item'" in d[0]["msg"]
    skipped = client.post("/recommend", json={"ratings": [*good, {"item": "no-such-item", "rating": 4}], "unknown_items": "skip"})
    assert skipped.status_code == 200 and any("no-such-item" in n for n in skipped.json()["notes"])
    d = _detail(client.post("/recommend", json={"ratings": [{"item": good[0]["item"], "rating": 9}]}))
    assert d[0]["type"] == "rating_range" and d[0]["loc"] == ["body", "ratings", 0, "rating"]
    d = _detail(client.post("/predict", json={"items": ["zzz"]}))
    assert d[0]["type"] == "unknown_item" and d[0]["loc"] == ["body", "items", 0]


def test_oversize_requests_are_refused(client, server):
    ids = list(server["model"].catalogue.ids)
    big = {"ratings": [{"item": ids[0], "rating": 3}] * 2000}
    r = client.post("/recommend", json=big)
    assert r.status_code == 413 and "exceeds the limit of 20000 bytes" in r.json()["detail"][0]["msg"]
    # streamed without a content length: counted as it arrives
    payload = json.dumps(big).encode()
    r = client.post("/recommend", content=iter([payload[i:i + 4096] for i in range(0, len(payload), 4096)]),
                    headers={"content-type": "application/json"})
    assert r.status_code == 413
    d = _detail(client.post("/recommend", json={"ratings": [{"item": ids[j % len(ids)], "rating": 3} for j in range(51)]}))
    assert d[0]["loc"] == ["body", "ratings"] and d[0]["type"] == "too_long"
    d = _detail(client.post("/recommend", json={"k": 21}))
    assert d[0]["loc"] == ["body", "k"] and d[0]["type"] == "less_than_equal"
    d = _detail(client.post("/predict", json={"items": ids[:1] * 101}))
    assert d[0]["loc"] == ["body", "items"]


def test_concurrent_requests_all_get_their_own_answer(server):
    model = server["model"]
    ids = list(model.catalogue.ids)
    bodies = [{"user_id": f"u{n}", "ratings": [{"item": ids[(n + j) % len(ids)], "rating": 1 + (n * j) % 5}
                                             for j in range(n % 7)], "k": 4} for n in range(24)]
    expected = [model.recommend(user={}, ratings=[(r["item"], r["rating"]) for r in b["ratings"]], k=4,
                                user_id=b["user_id"]).item_ids for b in bodies]

    async def go():
        async with httpx.AsyncClient(base_url=server["url"], timeout=60) as c:
            return await asyncio.gather(*(c.post("/recommend", json=b) for b in bodies))

    responses = asyncio.run(go())
    assert [r.status_code for r in responses] == [200] * len(bodies)
    assert [[i["item"] for i in r.json()["items"]] for r in responses] == expected
    assert [r.json()["user_id"] for r in responses] == [b["user_id"] for b in bodies]


def test_requests_beyond_max_pending_get_503(model_dir):
    model = load_model(model_dir)
    running = Running(model, Limits(max_pending=1, workers=1))
    try:
        with model._lock:  # the model is busy: the first request waits inside the pool
            with httpx.Client(base_url=running.url, timeout=30) as c:
                box = {}
                first = threading.Thread(target=lambda: box.update(
                    r=httpx.post(f"{running.url}/recommend", json={"k": 2}, timeout=30)))
                first.start()
                deadline = time.time() + 20
                while c.get("/health").json()["pending"] < 1:
                    assert time.time() < deadline
                    time.sleep(0.02)
                busy = c.post("/recommend", json={"k": 2})
                assert busy.status_code == 503 and busy.headers["retry-after"] == "1"
                assert "server busy" in busy.json()["detail"]
        first.join(30)
        assert box["r"].status_code == 200
    finally:
        running.stop()


def test_concurrent_recommends_are_micro_batched_each_with_its_own_answer_and_error(model_dir):
    model = load_model(model_dir)
    ids = list(model.catalogue.ids)
    bodies = [{"user_id": f"u{n}", "k": 5,
               "ratings": [{"item": ids[(n + j) % len(ids)], "rating": 1 + (n * j) % 5} for j in range(1 + n % 4)]}
              for n in range(8)]
    bad = {"k": 5, "ratings": [{"item": ids[0], "rating": 4}, {"item": "nope", "rating": 3}]}
    expected = [model.recommend(user={}, ratings=[(r["item"], r["rating"]) for r in b["ratings"]], k=5,
                                user_id=b["user_id"]) for b in bodies]
    running = Running(model, Limits(max_pending=64, workers=1, max_batch=16))
    box: dict = {}

    def post(name, body):
        box[name] = httpx.post(f"{running.url}/recommend", json=body, timeout=60)

    try:
        with httpx.Client(base_url=running.url, timeout=30) as c:
            def wait_pending(n):
                deadline = time.time() + 20
                while c.get("/health").json()["pending"] < n:
                    assert time.time() < deadline
                    time.sleep(0.02)

            with model._lock:  # the model is busy with the first request: the others queue meanwhile
                threads = [threading.Thread(target=post, args=(0, bodies[0]))]
                threads[0].start()
                wait_pending(1)
                threads += [threading.Thread(target=post, args=(n, b)) for n, b in enumerate(bodies) if n] + [
                    threading.Thread(target=post, args=("bad", bad))]
                for t in threads[1:]:
                    t.start()
                wait_pending(len(bodies) + 1)
            for t in threads:
                t.join(60)
            health = c.get("/health").json()
        # one call for the first request, one for the eight that queued behind it
        assert health["batches"] == 2 and health["batched_requests"] == len(bodies) + 1
        for n, want in enumerate(expected):
            got = box[n].json()
            assert box[n].status_code == 200 and got["user_id"] == bodies[n]["user_id"]
            assert [i["item"] for i in got["items"]] == want.item_ids
            assert [i["predicted_rating"] for i in got["items"]] == pytest.approx(want.predicted, abs=1e-6)
        # the refused request is answered alone: its error names its own field
        assert box["bad"].status_code == 422
        detail = box["bad"].json()["detail"][0]
        assert detail["loc"] == ["body", "ratings", 1, "item"] and detail["type"] == "unknown_item"
    finally:
        running.stop()


def test_metarec_serve_command_binds_loopback_and_answers(model_dir):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "metarec.cli", "serve", str(model_dir), "--port", str(port),
                             "--log-level", "warning"], stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.time() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "metarec serve did not come up"
            time.sleep(0.2)
        r = httpx.post(f"http://127.0.0.1:{port}/recommend", json={"k": 2}, timeout=10)
        assert r.status_code == 200 and len(r.json()["items"]) == 2
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    assert re.search(rf"on http://127\.0\.0\.1:{port}", err)


def test_serve_reports_a_bad_model_folder_in_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "metarec.cli", "serve", str(tmp_path / "none")],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2 and "no such model folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow  # starts a second server process; not needed to trust the service itself
def test_serving_benchmark_script_records_what_it_measured(model_dir, tmp_path):
    """benchmarks/bench_serving.py end to end, briefly (how fast is for the benchmark itself)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_serving.py"
    spec = importlib.util.spec_from_file_location("bench_serving", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "serving.json"
    assert mod.main([str(model_dir), "--repeats", "5", "--warmup", "2", "--users", "4", "--ratings", "6",
                     "--clients", "3", "--duration", "1", "--out", str(out)]) == 0
    record = json.loads(out.read_text())
    (m,) = record["models"]
    assert m["method"] == "mamo" and m["catalogue_items"] == m["in_process"]["items_scored"]
    assert m["in_process"]["n"] == 5 and m["in_process"]["ratings_per_user"] == 6
    assert m["in_process"]["learner_adapt_and_predict_only"]["n"] == 5
    fl = m["in_process"]["floor"]  # fewer users (4) than the floor's two batches of 16: cycled
    assert fl["batch"] == 16 and min(fl["whole_catalogue_cpu_ms"], fl["adapt_one_item_cpu_ms"], fl["batch_per_user_cpu_ms"]) > 0
    assert fl["score_catalogue_cpu_ms"] == pytest.approx(fl["whole_catalogue_cpu_ms"] - fl["adapt_one_item_cpu_ms"])
    assert m["in_process"]["cpu_time"]["n"] == 5 and m["http"]["server_cpu_ms_per_request"] > 0
    assert fl["ops_adapt_one_item"] > 0 and fl["ops_whole_catalogue"] >= fl["ops_adapt_one_item"] and fl["trivial_op_us"] > 0
    assert fl["cpu_us_per_op_adapt_one_item"] == pytest.approx(fl["adapt_one_item_cpu_ms"] * 1000 / fl["ops_adapt_one_item"])
    out2 = tmp_path / "floor.json"
    assert mod.main([str(model_dir), "--floor-only", "--repeats", "3", "--users", "4", "--ratings", "6", "--out", str(out2)]) == 0
    (only,) = json.loads(out2.read_text())["models"]
    assert "in_process" not in only and "http" not in only and only["floor"]["ops_adapt_one_item"] == fl["ops_adapt_one_item"]
    assert m["http"]["clients"] == 3 and m["http"]["requests"] >= 3 and m["http"]["errors"] == 0
    env = record["environment"]
    assert env["torch_threads"] == 1 and len(env["load_average_before_after"]) == 2
