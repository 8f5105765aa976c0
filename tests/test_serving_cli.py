"""``metarec fit`` and ``metarec recommend`` from the command line (click's runner, real files)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from metarec.cli import main
from metarec.serving import load_model

FIT = ["fit", "-m", "profile-mlp-finetune", "--dataset", "synthetic", "--set", "synthetic.n_users=60",
       "--set", "synthetic.n_items=40", "--epochs", "1", "--threads", "1", "--device", "cpu", "--set", "n_boot=10"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "model"
    r = CliRunner().invoke(main, [*FIT, "--holdout", "-o", str(out)])
    assert r.exit_code == 0, r.output
    return out


def test_fit_writes_a_complete_folder_with_a_card(model_dir):
    names = sorted(p.name for p in model_dir.iterdir())
    assert names == sorted(["card.json", "card.md", "catalogue.json", "catalogue.safetensors", "manifest.json",
                            "model.json", "schema.json", "weights.safetensors"])
    card = json.loads((model_dir / "card.json").read_text())
    assert card["method"] == "profile-mlp-finetune" and card["config"]["epochs"] == 1
    assert card["held_out"]["test_users"] > 0 and "overall" in card["held_out"]["metrics"]
    assert card["git"]["commit"] and card["versions"]["metarec"]
    md = (model_dir / "card.md").read_text()
    assert "# Model card: profile-mlp-finetune" in md and "## Held-out metrics" in md
    assert load_model(model_dir).method == "profile-mlp-finetune"


def test_fit_refuses_to_overwrite_and_reports_bad_settings(model_dir, tmp_path):
    r = CliRunner().invoke(main, [*FIT, "-o", str(model_dir)])
    assert r.exit_code == 2 and "already holds a model folder; pass --force" in r.output
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    r = CliRunner().invoke(main, [*FIT, "-o", str(other), "--force"])
    assert r.exit_code == 2 and "is not a model folder" in r.output and (other / "keep.txt").exists()
    r = CliRunner().invoke(main, [*FIT, "-o", str(tmp_path / "m"), "--set", "profile-mlp-finetune.lrr=1"])
    assert r.exit_code == 2 and "unknown key 'lrr'" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["fit", "-m", "no-such-method", "--dataset", "synthetic", "-o", str(tmp_path / "n")])
    assert r.exit_code == 2 and "unknown learner 'no-such-method'" in r.output


def write_inputs(tmp_path, model, rows=None):
    ids = list(model.catalogue.ids)
    user = tmp_path / "user.json"
    user.write_text(json.dumps({"segment": "s0"}))
    ratings = tmp_path / "ratings.csv"
    rows = rows if rows is not None else [f"{ids[0]},5", f"{ids[1]},2", f"{ids[2]},4"]
    ratings.write_text("item_id,rating\n" + "\n".join(rows) + "\n")
    return user, ratings


def test_recommend_prints_a_table_and_json(model_dir, tmp_path):
    model = load_model(model_dir)
    user, ratings = write_inputs(tmp_path, model)
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--user", str(user), "--ratings", str(ratings), "-k", "4"])
    assert r.exit_code == 0, r.output
    assert "top 4 of" in r.output and "rank" in r.output and "predicted" in r.output
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--user", str(user), "--ratings", str(ratings), "-k", "4", "--json"])
    out = json.loads(r.stdout)
    ids = list(model.catalogue.ids)
    local = model.recommend(user={"segment": "s0"}, ratings=[(ids[0], 5.0), (ids[1], 2.0), (ids[2], 4.0)], k=4)
    assert [i["item"] for i in out["items"]] == local.item_ids and out["n_ratings_used"] == 3


def test_recommend_reports_bad_input_in_one_line(model_dir, tmp_path):
    model = load_model(model_dir)
    ids = list(model.catalogue.ids)
    user, ratings = write_inputs(tmp_path, model, [f"{ids[0]},5", f"{ids[1]},lots"])
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--ratings", str(ratings)])
    assert r.exit_code == 2 and "ratings.csv: line 3: rating 'lots' is not a number" in r.output
    _, ratings = write_inputs(tmp_path, model, [f"{ids[0]},5", "ghost,3"])
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--ratings", str(ratings)])
    assert r.exit_code == 2 and "ratings[1].item: unknown item id 'ghost'" in r.output
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--ratings", str(ratings), "--skip-unknown"])
    assert r.exit_code == 0 and "'ghost' skipped" in r.output
    bad_user = tmp_path / "bad.json"
    bad_user.write_text("{\"segment\": ")
    r = CliRunner().invoke(main, ["recommend", str(model_dir), "--user", str(bad_user)])
    assert r.exit_code == 2 and "bad.json: line 1: not valid JSON" in r.output
    r = CliRunner().invoke(main, ["recommend", str(tmp_path / "nowhere")])
    assert r.exit_code == 2 and "no such model folder" in r.output and "Traceback" not in r.output


def test_fit_tuned_takes_the_best_settings_of_a_tune_folder_and_records_the_study(tmp_path):
    pytest.importorskip("optuna")
    runner = CliRunner()
    common = ["--dataset", "synthetic", "--set", "synthetic.n_users=160", "--set", "synthetic.n_items=80"]
    tune_dir = tmp_path / "tune"
    r = runner.invoke(main, ["tune", "-m", "baseline-predictor", "--trials", "3", *common, "--threads", "1",
                             "--out", str(tune_dir), "--no-progress"])
    assert r.exit_code == 0, r.output
    out = tmp_path / "model"
    r = runner.invoke(main, ["fit", "-m", "baseline-predictor", "--tuned", str(tune_dir), *common, "--threads", "1",
                             "--device", "cpu", "--set", "n_boot=10", "--holdout", "-o", str(out)])
    assert r.exit_code == 0, r.output
    card = json.loads((out / "card.json").read_text())
    src = card["settings_source"]
    assert src["kind"] == "tuned" and src["study"] == "baseline-predictor" and src["trials"] == 3
    assert src["tuning_fraction"] == 0.1
    # the fitted settings are the tune's best trial's
    from metarec.bench.config import layer_from_file

    tuned = layer_from_file(tune_dir / "best.toml")["methods"]["baseline-predictor"]
    for key, value in tuned.items():
        if key in card["config"]:
            assert card["config"][key] == pytest.approx(value), key
    assert "tuned: `metarec tune` study baseline-predictor" in (out / "card.md").read_text()
    # the held-out users are the bench's test users under the tune's protocol: no pool user
    model = load_model(out)
    assert model.card["held_out"]["test_users"] > 0
    # a method the tune did not tune, and a protocol that would test pool users, are refused
    r = runner.invoke(main, ["fit", "-m", "global-mean", "--tuned", str(tune_dir), *common, "-o", str(tmp_path / "g")])
    assert r.exit_code == 2 and "holds no settings for 'global-mean'" in r.output and "Traceback" not in r.output
    r = runner.invoke(main, ["fit", "-m", "baseline-predictor", "--tuned", str(tune_dir), *common,
                             "--set", "protocol.tuning_fraction=0.2", "-o", str(tmp_path / "p")])
    assert r.exit_code == 2 and "tuning_fraction" in r.output and "Traceback" not in r.output
    # a plain fit records where its settings came from too
    r = runner.invoke(main, ["fit", "-m", "global-mean", *common, "--threads", "1", "--device", "cpu", "-o", str(tmp_path / "d")])
    assert r.exit_code == 0, r.output
    assert json.loads((tmp_path / "d" / "card.json").read_text())["settings_source"]["kind"] == "defaults"
