"""Contracts of the core pieces: schema, feature tables, task sets/batches, config, state files."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from metarec.checkpoint import load_state, save_state, state_exists
from metarec.config import ConfigError, build_config, parse_overrides
from metarec.runtime import derive_seed, resolve_device, torch_generator
from metarec.schema import SCENARIOS, Feature, FeatureSchema, scenario_code
from metarec.tasks import FeatureTable


def test_scenario_codes_follow_the_label_order():
    assert [SCENARIOS[scenario_code(u, i)] for u in (0, 1) for i in (0, 1)] == ["W-W", "W-C", "C-W", "C-C"]


def test_feature_validation_messages_name_the_feature():
    with pytest.raises(ValueError, match="'genre'.*vocabulary"):
        Feature("genre", "categorical")
    with pytest.raises(ValueError, match="'tags'.*max_values"):
        Feature("tags", "multi_categorical", ("a",))
    with pytest.raises(ValueError, match="'x'.*kind 'text'"):
        Feature("x", "text")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="duplicate user feature names: a"):
        FeatureSchema((Feature("a", "numeric"), Feature("a", "numeric")), ())
    with pytest.raises(ValueError, match="rating_max"):
        FeatureSchema((), (), rating_min=5, rating_max=1)


def test_schema_round_trips_through_dict(synthetic_data):
    schema = synthetic_data.schema
    again = FeatureSchema.from_dict(schema.to_dict())
    assert again == schema
    assert schema.item_feature("tags").max_values == 3
    with pytest.raises(KeyError, match="no item feature named 'nope'"):
        schema.item_feature("nope")


def test_feature_table_rejects_out_of_vocabulary_indices():
    f = Feature("g", "categorical", ("a", "b"))
    with pytest.raises(ValueError, match="'g'.*outside"):
        FeatureTable((f,), {"g": torch.tensor([0, 2])}, ids=np.array(["x", "y"]))
    with pytest.raises(ValueError, match="2 rows but the table has 3"):
        FeatureTable((f,), {"g": torch.tensor([0, 1])}, ids=np.array(["x", "y", "z"]))


def test_taskset_batches_have_fixed_shapes_and_follow_the_tables(synthetic_split):
    ts = synthetic_split.train
    assert ts.n_support == 15 and ts.n_query == 5
    batch = ts.batch([3, 0, 7])
    assert batch.support_ratings.shape == (3, 15)
    assert batch.query_features["tags"].shape == (3, 5, 3)
    assert batch.user_features["segment"].shape == (3,)
    # features are gathered from the tables by row
    items = ts.query_items[0]
    assert torch.equal(batch.query_features["genre"][1], ts.items.columns["genre"][items])
    assert torch.equal(batch.user_index, ts.user_index[[3, 0, 7]])
    task = ts[0]
    assert len(task.support_item_ids) == 15 and len(task.query_scenarios) == 5
    assert set(task.query_scenarios) <= set(SCENARIOS)


def test_batches_cover_every_task_once_and_shuffle_is_seeded(synthetic_split):
    ts = synthetic_split.train
    seen = torch.cat([b.user_index for b in ts.batches(64)])
    assert torch.equal(seen, ts.user_index)
    a = torch.cat([b.user_index for b in ts.batches(64, shuffle=True, generator=torch_generator(1, "x"))])
    b = torch.cat([b.user_index for b in ts.batches(64, shuffle=True, generator=torch_generator(1, "x"))])
    c = torch.cat([b.user_index for b in ts.batches(64, shuffle=True, generator=torch_generator(2, "x"))])
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == sorted(ts.user_index.tolist())
    assert len(list(ts.batches(100, drop_last=True))) == len(ts) // 100
    with pytest.raises(ValueError, match="batch_size"):
        next(ts.batches(0))


def test_subset_and_device_move(synthetic_split):
    ts = synthetic_split.test
    sub = ts.subset([2, 1])
    assert len(sub) == 2 and torch.equal(sub.query_ratings[0], ts.query_ratings[2])
    moved = sub.batch([0, 1]).to("cpu")
    assert moved.device.type == "cpu"


@dataclass
class _Cfg:
    lr: float = 0.1
    steps: int = 1
    name: str = "x"
    layers: tuple[int, ...] = (64, 64)
    order: str | None = None
    flag: bool = False


def test_config_layers_and_errors():
    cfg = build_config(_Cfg, {"lr": 1}, {"steps": 3}, parse_overrides(["layers=[8, 4]", "flag=true", "name=abc"]))
    assert cfg == _Cfg(lr=1.0, steps=3, name="abc", layers=(8, 4), order=None, flag=True)
    with pytest.raises(ConfigError, match="unknown key 'stepz'.*did you mean 'steps'"):
        build_config(_Cfg, {"stepz": 3})
    with pytest.raises(ConfigError, match="steps: expected an integer"):
        build_config(_Cfg, {"steps": "many"})
    with pytest.raises(ConfigError, match="not of the form key=value"):
        parse_overrides(["lr"])
    assert parse_overrides(["mamo.inner_lr=0.5"]) == {"mamo": {"inner_lr": 0.5}}


def test_state_files_round_trip_nested_state_without_pickle(tmp_path):
    state = {
        "model": {"w": torch.randn(3, 2), "b": torch.zeros(2, dtype=torch.float64)},
        "optimizer": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]},
        "__extra__": {"epochs_done": 2, "name": "x", "none": None},
    }
    save_state(tmp_path / "ckpt", state)
    back = load_state(tmp_path / "ckpt")
    assert torch.equal(back["model"]["w"], state["model"]["w"])
    assert back["model"]["b"].dtype == torch.float64
    assert back["optimizer"]["state"][0]["step"].item() == 3.0  # integer keys survive
    assert back["__extra__"] == state["__extra__"]
    (arrays,) = tmp_path.glob("ckpt.*.npz")
    np.load(arrays, allow_pickle=False).close()
    # a second save replaces the pair; the old array file is removed, the JSON names the new one
    state["model"]["w"] = torch.ones(3, 2)
    save_state(tmp_path / "ckpt", state)
    assert len(list(tmp_path.glob("ckpt.*.npz"))) == 1
    assert torch.equal(load_state(tmp_path / "ckpt")["model"]["w"], torch.ones(3, 2))
    assert state_exists(tmp_path / "ckpt") and not state_exists(tmp_path / "other")


def test_runtime_seeds_and_devices():
    assert derive_seed(0, "split") == derive_seed(0, "split") != derive_seed(1, "split")
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_importing_metarec_and_cli_help_stay_light():
    """`import metarec`, the config modules and `metarec --help` do not import torch, the metrics
    or SciPy; the lazily exported names still resolve to the real classes."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import metarec, metarec.bench, metarec.bench.config, metarec.config, metarec.cli\n"
        "from metarec.cli import main\n"
        "try:\n"
        "    main(['--help'], standalone_mode=False)\n"
        "    main(['bench', '--help'], standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = sorted(m for m in ('torch', 'scipy', 'metarec.metrics', 'metarec.tasks') if m in sys.modules)\n"
        "print('HEAVY', heavy)\n"
        "from metarec import Task, TaskSet\n"
        "from metarec.bench import BenchConfig, run_bench\n"
        "import metarec.tasks, metarec.bench.runner\n"
        "assert Task is metarec.tasks.Task and TaskSet is metarec.tasks.TaskSet\n"
        "assert run_bench is metarec.bench.runner.run_bench\n"
        "print('LAZY OK')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "HEAVY []" in res.stdout and "LAZY OK" in res.stdout, res.stdout
    with pytest.raises(AttributeError, match="no attribute 'Taks'"):
        import metarec

        metarec.Taks  # noqa: B018
