"""The fair comparison's configs (benchmarks/configs/fair-*.toml): valid bench configs that name
every registered user-task method, 5 seeds and the tuning pool of their studies, exactly what
benchmarks/fair_config.py writes from the committed studies -- validated, never run here."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from metarec.bench.config import check_provenance, layer_from_file, resolve_config
from metarec.config import ConfigError, load_toml
from metarec.registry import get_learner, learners_for_protocol

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "benchmarks" / "configs"
TUNE = REPO / "benchmarks" / "results" / "tune-ml1m-20trials-2026-12-02"
TUNE_TANP = REPO / "benchmarks" / "results" / "tune-ml1m-tanp-2026-12-02"
TUNE_RUM = REPO / "benchmarks" / "results" / "tune-ml1m-rum-2026-12-02"
TUNE_COLDNAS = REPO / "benchmarks" / "results" / "tune-ml1m-coldnas-2026-12-02"
FAIR = {"ml1m": "ml-1m", "yelp": "yelp"}  # config name -> dataset


def _header_args(name: str) -> list[str]:
    """The generator arguments in the committed config's own regenerate line."""
    for line in (CONFIGS / f"fair-{name}.toml").read_text().splitlines():
        if line.startswith("#   python benchmarks/fair_config.py "):
            words = shlex.split(line.lstrip("# ").split(">")[0])
            return words[words.index("benchmarks/fair_config.py") + 1:]
    raise AssertionError(f"fair-{name}.toml has no regenerate line")


def _committed_studies(name: str) -> set[Path]:
    """Every study committed for the config's dataset: none may be left out of the config."""
    return {p.parent.relative_to(REPO) for p in (REPO / "benchmarks" / "results").glob(f"tune-{name}-*/best.toml")}


def _generator():
    spec = importlib.util.spec_from_file_location("fair_config", REPO / "benchmarks" / "fair_config.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _generate(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = _generator().main(list(args))
    return rc, out.getvalue(), err.getvalue()


def _schema():
    from metarec.data.synthetic import make_synthetic

    return make_synthetic(n_users=30, n_items=40, seed=0).schema


@pytest.mark.parametrize("name", sorted(FAIR))
def test_fair_config_validates_with_every_method_five_seeds_and_the_studies_pool(name):
    dataset = FAIR[name]
    cfg = resolve_config(layer_from_file(CONFIGS / f"fair-{name}.toml"))
    assert cfg.dataset == dataset
    assert set(cfg.methods) == set(learners_for_protocol("user-cold"))
    assert list(cfg.seeds) == [0, 1, 2, 3, 4]
    assert cfg.protocol["tuning_fraction"] == 0.1 and cfg.protocol["tuning_seed"] == 0
    check_provenance(cfg)  # the pool of every study is the pool the bench keeps out of its test sets
    # every study has the same trial budget, except one the header declares with its reason
    text = (CONFIGS / f"fair-{name}.toml").read_text()
    declared = {m for m in cfg.provenance
                if any(line.startswith(f"# {kind} budget: {m} {cfg.provenance[m]['budget']} trials -- ")
                       for kind in ("Smaller", "Larger", "Declared") for line in text.splitlines())}
    budgets = {p["budget"] for m, p in cfg.provenance.items() if m not in declared}
    assert len(budgets) <= 1, f"undeclared budgets differ: {budgets}"
    for m, p in cfg.provenance.items():
        assert p["dataset"] == dataset and p["tuning_fraction"] == 0.1
        assert (REPO / p["study_path"] / "best.toml").exists(), f"{m}: its study is committed"
        assert cfg.settings_source(m)["kind"] == "tuned"
    for m in cfg.methods:  # every method's settings build a valid learner config
        s = cfg.settings_for(m)
        get_learner(m).from_settings(_schema(), preset=s.preset, overrides=s.overrides)


@pytest.mark.parametrize("name", sorted(FAIR))
def test_committed_fair_config_is_what_the_generator_writes(name, monkeypatch):
    args = _header_args(name)
    assert args[:6] == ["--dataset", FAIR[name], "--budget", "20", "--name", name], args
    tunes = [Path(a) for a in args[6:] if a.startswith("benchmarks/results/")]
    assert set(tunes) == _committed_studies(name), "the config names every committed study, no other"
    monkeypatch.chdir(REPO)  # the header names the studies relative to the repository
    rc, text, err = _generate(*args)
    assert rc == 0, err
    assert text == (CONFIGS / f"fair-{name}.toml").read_text()
    tuned = {m for t in tunes for m in load_toml(REPO / t / "best.toml")["methods"]}
    for m in tuned:  # each study's line in the header
        assert f"\n# {m} " in text, m
    left = len(learners_for_protocol("user-cold")) - len(tuned)
    assert (f"NOT YET TUNED ({left} of 13)" in text) == (left > 0)


def test_generator_refuses_studies_that_are_not_comparable(tmp_path):
    rc, _, err = _generate("--dataset", "yelp", "--budget", "20", "--name", "x", str(TUNE))
    assert rc == 2 and "tuned on 'ml-1m', not 'yelp'" in err
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "10", "--name", "x", str(TUNE))
    assert rc == 2 and "budget of 20 trials, not 10" in err and "--budget-for" in err
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", str(TUNE), str(TUNE / "mamo"))
    assert rc == 2 and "mamo is tuned in two folders" in err
    other = tmp_path / "tune-other"
    other.mkdir()
    text = (TUNE / "mamo" / "best.toml").read_text().replace("tuning_seed = 0", "tuning_seed = 3")
    (other / "best.toml").write_text(text)
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", str(TUNE / "melu"), str(other))
    assert rc == 2 and "different pools" in err
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", "--require-all", str(TUNE))
    assert rc == 2 and "no study for metacs-dnn" in err
    # a declared smaller budget needs its reason, which goes into the header
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "30", "--name", "x", str(TUNE / "mamo"),
                           "--budget-for", "mamo=20")
    assert rc == 2 and "say why" in err
    rc, text, err = _generate("--dataset", "ml-1m", "--budget", "30", "--name", "x", str(TUNE / "mamo"),
                              "--budget-for", "mamo=20", "--why", "mamo=CPU time", "--set", "mamo.epochs=15")
    assert rc == 0, err
    assert "# Smaller budget: mamo 20 trials -- CPU time" in text and "# Changed after the tune: mamo epochs = 15" in text
    cfg = resolve_config(layer_from_file(_write(tmp_path / "c.toml", text)))
    assert cfg.settings_for("mamo").overrides["epochs"] == 15
    # the header's command regenerates the same file, the reason included
    command = next(line for line in text.splitlines() if "python benchmarks/fair_config.py" in line)
    argv = shlex.split(command.split("fair_config.py", 1)[1].split(" > ", 1)[0])
    rc, again, err = _generate(*argv)
    assert rc == 0 and again == text, err
    # a budget larger than the others' (e.g. one trial was a duplicate) is declared as larger
    rc, text, err = _generate("--dataset", "ml-1m", "--budget", "10", "--name", "x", str(TUNE / "mamo"),
                              "--budget-for", "mamo=20", "--why", "mamo=one trial repeated")
    assert rc == 0 and "# Larger budget: mamo 20 trials -- one trial repeated" in text, err


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_bench_refuses_a_tuned_config_on_another_pool_before_running(tmp_path):
    from metarec.cli import main

    cfg = resolve_config(layer_from_file(CONFIGS / "fair-ml1m.toml"), {"bench": {"protocol": {"tuning_fraction": 0.2}}})
    with pytest.raises(ConfigError, match=r"\[provenance\.mamo\]: protocol.tuning_fraction is 0.2 here but 0.1"):
        check_provenance(cfg)
    cfg = resolve_config(layer_from_file(CONFIGS / "fair-ml1m.toml"), {"bench": {"dataset": "yelp"}})
    with pytest.raises(ConfigError, match="tuned on 'ml-1m'"):
        check_provenance(cfg)
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["bench", "-c", str(CONFIGS / "fair-ml1m.toml"), "--set", "protocol.tuning_fraction=0.2",
                                    "--data-dir", str(tmp_path), "--out", str(out)])
    assert res.exit_code != 0 and "tuning-pool users" in res.output and not out.exists()


def _scored(method: str, preset: str, value: float, overrides: dict | None = None, **changed) -> dict:
    """A pool_score_presets.py row for ``method``'s ``preset`` as it resolves today (``changed``:
    settings that differ from today's, as if the preset had been edited since)."""
    from metarec.config import config_to_dict, preset_config

    settings = config_to_dict(preset_config(get_learner(method), preset, overrides))
    return {"method": method, "preset": preset, "overrides": overrides or {}, "settings": {**settings, **changed},
            "metric": "pool mae", "value": value}


def _study_with_presets(tmp_path: Path, rows: list[dict], pool_users: int = 604) -> Path:
    import json

    d = tmp_path / "tune-mamo"
    d.mkdir()
    (d / "best.toml").write_text((TUNE / "mamo" / "best.toml").read_text())
    (d / "pool-presets.json").write_text(json.dumps({"format": "metarec-pool-presets-1", "pool_users": pool_users,
                                                     "split_seed": 0, "seed": 0, "rows": rows}))
    return d


def test_a_preset_that_beats_the_tuned_best_on_the_pool_is_what_the_fair_config_runs(tmp_path):
    tuned_best = load_toml(TUNE / "mamo" / "best.toml")["provenance"]["mamo"]["best_value"]
    d = _study_with_presets(tmp_path, [_scored("mamo", "paper", tuned_best + 0.01),
                                       _scored("mamo", "tuned", tuned_best - 0.02, {"epochs": 15})])
    rc, text, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", str(d))
    assert rc == 0, err
    assert "mamo: preset 'tuned' (epochs = 15): pool " in text and "-> runs the preset" in text
    cfg = resolve_config(layer_from_file(_write(tmp_path / "c.toml", text)))
    s = cfg.settings_for("mamo")
    assert s.preset == "tuned" and s.overrides == {"epochs": 15}  # none of the tuned values
    assert cfg.provenance["mamo"]["chosen"] == "preset" and cfg.provenance["mamo"]["preset_value"] < tuned_best
    assert cfg.settings_source("mamo")["kind"] == "tuned"  # still chosen by the study's pool, not by hand


def test_a_preset_that_loses_on_the_pool_leaves_the_tuned_settings(tmp_path):
    tuned_best = load_toml(TUNE / "mamo" / "best.toml")["provenance"]["mamo"]["best_value"]
    d = _study_with_presets(tmp_path, [_scored("mamo", "paper", tuned_best + 0.01)])
    rc, text, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", str(d))
    assert rc == 0, err
    assert "-> runs the tuned best" in text
    cfg = resolve_config(layer_from_file(_write(tmp_path / "c.toml", text)))
    assert cfg.settings_for("mamo").preset is None
    assert cfg.settings_for("mamo").overrides == load_toml(TUNE / "mamo" / "best.toml")["methods"]["mamo"]
    assert cfg.provenance["mamo"]["chosen"] == "tuned"


@pytest.mark.parametrize("case", ["changed", "unrecorded", "other-pool"])
def test_a_preset_score_that_no_longer_describes_the_preset_is_refused(tmp_path, case):
    row = _scored("mamo", "tuned", 0.5, {"epochs": 15}, **({"memory_slots": 999} if case == "changed" else {}))
    if case == "unrecorded":
        del row["settings"]
    d = _study_with_presets(tmp_path, [row], pool_users=100 if case == "other-pool" else 604)
    rc, _, err = _generate("--dataset", "ml-1m", "--budget", "20", "--name", "x", str(d))
    assert rc == 2
    assert {"changed": "has changed since it was scored (memory_slots)", "unrecorded": "without its resolved settings",
            "other-pool": "pool_users = 100"}[case] in err


def test_reports_say_when_a_preset_won_over_the_tuned_best():
    from metarec.bench.report import settings_details
    from metarec.serving.fit import settings_line

    cfg = resolve_config(layer_from_file(CONFIGS / "fair-ml1m.toml"))
    mamo, melu = cfg.settings_source("mamo"), cfg.settings_source("melu")
    assert mamo["chosen"] == "preset" and melu["chosen"] == "tuned"
    line = settings_details(mamo)
    assert line.startswith("preset `tuned` (epochs=15), chosen over the tuned best") and "study `mamo`" in line
    assert settings_details(melu).startswith("study `melu`")
    assert settings_line(mamo).startswith("preset tuned, chosen on the tuning pool over")
    assert settings_line(melu).startswith("tuned: ")
