"""The "Bring your own data" page's example (docs/examples/my-shop) is loaded for real here."""

from __future__ import annotations

from pathlib import Path

import pytest

from metarec.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "my-shop"
SCHEMA = EXAMPLE / "schema.toml"
PAGE = REPO / "docs" / "custom-data.md"


def test_page_includes_the_tested_schema_verbatim():
    page = PAGE.read_text("utf-8")
    assert '--8<-- "docs/examples/my-shop/schema.toml"' in page
    for name in ("ratings.csv", "users.csv", "items.csv"):
        assert f'--8<-- "docs/examples/my-shop/{name}:1:4"' in page


def test_example_schema_loads_with_the_documented_features():
    from metarec.data.custom import load_custom, load_schema_file

    spec = load_schema_file(SCHEMA)
    assert spec.name == "my-shop"
    assert spec.ratings.time == "timestamp"
    assert dict(spec.protocol) == {"user_state_rule": "time_quantile", "item_cold_max_ratings": 10}

    data = load_custom(SCHEMA)
    schema = data.schema
    assert [(f.name, f.kind) for f in schema.user_features] == [("age_group", "categorical"), ("income", "numeric")]
    assert [(f.name, f.kind) for f in schema.item_features] == [
        ("genres", "multi_categorical"), ("brand", "categorical"),
    ]
    # the page says: a missing brand becomes the <missing> category, a missing income the mean
    assert "<missing>" in schema.item_feature("brand").vocabulary
    assert schema.item_feature("genres").max_values == 3
    assert len(data.users) == 40 and len(data.items) == 60 and data.n_ratings == 880
    assert data.checksum.startswith("sha256:")
    assert not data.drops  # the example is clean: nothing was dropped


def test_example_goes_through_the_protocol_and_a_learner(tmp_path):
    import torch

    from metarec.data.custom import load_custom
    from metarec.data.protocol import ProtocolConfig, build_split
    from metarec.registry import get_learner

    data = load_custom(SCHEMA)
    split = build_split(data, ProtocolConfig(), seed=0)
    assert split.info["train_users"] == 32 and split.info["test_users"] == 8
    assert split.train.n_support == 15 and split.train.n_query == 5
    assert sum(split.info["query_scenarios_test"].values()) == 8 * 5

    learner = get_learner("global-mean").from_settings(data.schema, seed=0)
    pred = learner.meta_fit(split.train).predict(split.test)
    assert pred.shape == (8, 5)
    assert torch.all((pred >= 1) & (pred <= 5))


def test_a_misspelt_key_in_a_schema_names_the_file_and_the_key(tmp_path):
    from metarec.data.custom import load_schema_file

    text = SCHEMA.read_text("utf-8").replace('duplicates = "error"', 'duplicate = "error"')
    bad = tmp_path / "schema.toml"
    bad.write_text(text, "utf-8")
    with pytest.raises(ConfigError, match=r"schema\.toml.*duplicate"):
        load_schema_file(bad)
