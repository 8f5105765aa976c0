#!/usr/bin/env python3
"""Write the fair comparison's bench config (``benchmarks/configs/fair-<dataset>.toml``) from
``metarec tune`` studies: every registered user-task method, each with the best settings of
its study on the tuning pool, the same trial budget for all, then 5 seeds.

    python benchmarks/fair_config.py --dataset ml-1m --budget 20 --name ml1m \\
        benchmarks/results/tune-ml1m-20trials-2026-12-02 [more tune folders ...] \\
        [--budget-for s2meta=8 --why s2meta="one trial = 20 CPU-hours"] [--set s2meta.epochs=20] \\
        > benchmarks/configs/fair-ml1m.toml

Each tune folder's ``best.toml`` gives ``[methods.<m>]`` and ``[provenance.<m>]`` for the
methods it tuned (a folder may hold several studies, one per method). The script refuses:
a study on another dataset, studies on different pools (tuning fraction, tuning seed, split
seed, metric), a method tuned twice, and a study whose budget is not ``--budget`` unless
``--budget-for`` declares that method's smaller budget (with ``--why``: it is printed in the
header and so in the config). Registered methods without a study run their defaults and are
listed in the header with the command that tunes them; ``--require-all`` makes that an error
(the final config must not have any). ``--set M.key=value`` overrides a tuned value after
the tune (e.g. s²Meta tuned at reduced epochs per trial, run at its full schedule); the
header lists every such change. The output is deterministic: the same studies give the same file.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: Method order in the config: the paper's Table 1, the methods added since, the simple baselines.
ORDER = ("mamo", "melu", "metacs-dnn", "s2meta", "rum-item", "rum-feature", "tanp", "metahin", "coldnas",
         "global-mean", "baseline-predictor", "profile-mlp", "profile-mlp-finetune")
POOL_KEYS = ("tuning_fraction", "tuning_seed", "split_seed", "metric")


class FairConfigError(ValueError):
    """A study that cannot go into a fair config (message names the folder and what to do)."""


def _rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def collect(tune_dirs: list[Path], dataset: str) -> dict[str, dict[str, Any]]:
    """``method -> {"settings", "provenance", "study_path"}`` from the tune folders' best.toml."""
    from metarec.bench.config import layer_from_file

    out: dict[str, dict[str, Any]] = {}
    for d in tune_dirs:
        best = d / "best.toml" if d.is_dir() else d
        if not best.exists():
            raise FairConfigError(f"{d}: no best.toml (not a `metarec tune` folder, or no trial completed yet)")
        layer = layer_from_file(best)
        prov = layer.get("provenance") or {}
        if not prov:
            raise FairConfigError(f"{best}: no [provenance.<method>] tables, so not written by `metarec tune`")
        for m, p in prov.items():
            if p.get("dataset") != dataset:
                raise FairConfigError(f"{best}: {m} was tuned on {p.get('dataset')!r}, not {dataset!r}")
            if m in out:
                raise FairConfigError(f"{m} is tuned in two folders ({out[m]['study_path']}, {_rel(d)}): keep one study")
            out[m] = {"settings": dict(layer["methods"].get(m, {})), "provenance": dict(p), "study_path": _rel(d)}
        if d.is_dir() and (d / "pool-presets.json").exists():
            _choose_presets(d / "pool-presets.json", {m: out[m] for m in prov})
    pools = {tuple(e["provenance"].get(k) for k in POOL_KEYS) for e in out.values()}
    if len(pools) > 1:
        detail = "; ".join(f"{m}: " + ", ".join(f"{k}={e['provenance'].get(k)}" for k in POOL_KEYS) for m, e in out.items())
        raise FairConfigError(f"the studies were scored on different pools, so their settings are not comparable: {detail}")
    return out


def _choose_presets(path: Path, studies: dict[str, dict[str, Any]]) -> None:
    """Apply the pool-scored presets of ``path`` to this folder's ``studies`` (in place): the
    best-scoring preset of a method replaces its tuned settings if it beats the tuned best on
    the same pool; either way the entry records the comparison under ``"chosen"``."""
    import json

    from metarec.tuning.study import METRICS

    try:
        record = json.loads(path.read_text())
        rows = record["rows"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FairConfigError(f"{path}: not a pool_score_presets.py record ({exc}); rewrite it with that script")
    scored: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        m = row.get("method")
        if m not in studies:
            continue
        prov = studies[m]["provenance"]
        for key, want in (("metric", prov.get("metric")), ("pool_users", prov.get("pool_users")),
                          ("split_seed", prov.get("split_seed")), ("seed", prov.get("seed"))):
            got = row.get(key, record.get(key))
            if got != want:
                raise FairConfigError(f"{path}: {m}'s preset {row.get('preset')!r} was scored with {key} = {got!r}, "
                                      f"its study with {want!r}; score it again on the study's pool")
        _check_preset_unchanged(path, m, row)
        scored.setdefault(m, []).append(row)
    for m, candidates in scored.items():
        prov = studies[m]["provenance"]
        direction = METRICS.get(str(prov.get("metric")).removeprefix("pool "))
        if direction is None:
            raise FairConfigError(f"{path}: unknown pool metric {prov.get('metric')!r}")
        sign = 1.0 if direction == "minimize" else -1.0  # sign * value: lower is better
        row = min(candidates, key=lambda r: sign * float(r["value"]))  # the first of equals
        best, value = prov.get("best_value"), float(row["value"])
        wins = best is None or sign * value < sign * best
        entry = {"kind": "preset" if wins else "tuned", "preset": row.get("preset"),
                 "overrides": dict(row.get("overrides") or {}), "value": value, "tuned_best": best,
                 "presets_json": _rel(path)}
        studies[m]["chosen"] = entry
        if wins:
            studies[m]["settings"] = {"preset": entry["preset"], **entry["overrides"]}


def _check_preset_unchanged(path: Path, method: str, row: dict[str, Any]) -> None:
    """The scored preset must still resolve to the settings that were scored (presets get
    renamed and retuned; a score of an older preset says nothing about today's)."""
    from metarec.config import ConfigError, config_to_dict, preset_config
    from metarec.registry import get_learner

    preset, scored = row.get("preset"), row.get("settings")
    if scored is None:
        raise FairConfigError(f"{path}: {method}'s preset {preset!r} was scored without its resolved settings; "
                              "score it again with benchmarks/pool_score_presets.py")
    try:
        now = config_to_dict(preset_config(get_learner(method), preset, row.get("overrides") or {}))
    except ConfigError as exc:
        raise FairConfigError(f"{path}: {method}'s scored preset {preset!r} no longer resolves ({exc}); score it again")
    changed = sorted(k for k in set(now) | set(scored) if now.get(k) != scored.get(k))
    if changed:
        raise FairConfigError(f"{path}: {method}'s preset {preset!r} has changed since it was scored "
                              f"({', '.join(changed)}); score it again with benchmarks/pool_score_presets.py")


def _parse_pairs(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise FairConfigError(f"{what} {item!r}: expected METHOD=VALUE")
        out[key.strip()] = value.strip()
    return out


def render(dataset: str, name: str, budget: int, studies: dict[str, dict[str, Any]], methods: list[str], *,
           budget_for: dict[str, int], why: dict[str, str], sets: dict[str, dict[str, Any]], seeds: list[int],
           tuning_fraction: float) -> str:
    """The config text."""
    from metarec.tuning.outputs import toml_table

    for m, e in studies.items():
        want = budget_for.get(m, budget)
        got = e["provenance"].get("budget")
        if got != want:
            hint = "" if m in budget_for else f" (declare its budget with --budget-for {m}={got} --why {m}=...)"
            raise FairConfigError(f"{e['study_path']}: {m}'s study had a budget of {got} trials, not {want}{hint}")
    for m in budget_for:
        if m not in why:
            raise FairConfigError(f"--budget-for {m}: say why with --why {m}=\"...\" (it goes into the config's header)")
    pool = next(iter(studies.values()))["provenance"] if studies else {"tuning_fraction": tuning_fraction,
                                                                       "tuning_seed": 0}
    missing = [m for m in methods if m not in studies]
    head = [
        f"# The fair comparison on {dataset} (issue 22): every registered user-task method with the best settings",
        "# of ONE `metarec tune` study per method on the tuning pool, the same trial budget for every method,",
        f"# then {len(seeds)} seeds. Generated by benchmarks/fair_config.py -- regenerate, do not edit by hand:",
        "#",
        f"#   python benchmarks/fair_config.py --dataset {dataset} --budget {budget} --name {name} "
        + "".join(" " + p for p in sorted({e["study_path"] for e in studies.values()})) + "".join(
            f" --budget-for {m}={n} --why {shlex.quote(f'{m}={why[m]}')}" for m, n in sorted(budget_for.items())) + "".join(
            f" --set {m}.{k}={v}" for m, kv in sorted(sets.items()) for k, v in kv.items())
        + f" > benchmarks/configs/fair-{name}.toml",
        "#",
        f"# Budget: {budget} trials per method (seeded TPE, median pruning on the per-epoch pool score), every",
        "# setting drawn from the method's declared search space.",
        f"# Pool: protocol.tuning_fraction = {pool.get('tuning_fraction')}, tuning_seed = {pool.get('tuning_seed', 0)}: "
        "users that are never a test",
        "# user of any seed; the bench below keeps the same pool out of its test sets (checked at start).",
    ]
    for m, n in sorted(budget_for.items()):
        kind = "Smaller" if n < budget else "Larger" if n > budget else "Declared"
        head.append(f"# {kind} budget: {m} {n} trials -- {why[m]}")
    for m, kv in sorted(sets.items()):
        head.append(f"# Changed after the tune: {m} " + ", ".join(f"{k} = {v!r}" for k, v in kv.items()))
    if studies:
        head += ["#", "# method                 study                                        trials  complete  pruned  failed  best   wall s"]
        for m in methods:
            if m in studies:
                p, path = studies[m]["provenance"], studies[m]["study_path"]
                best = p.get("best_value")
                head.append(f"# {m:<22} {path:<44} {p.get('trials')!s:>6}  {p.get('complete')!s:>8}  {p.get('pruned')!s:>6}  "
                            f"{p.get('failed')!s:>6}  {'-' if best is None else f'{best:.4f}'}  {p.get('wall_time_s')}")
    chosen = {m: studies[m]["chosen"] for m in methods if "chosen" in studies.get(m, {})}
    if chosen:
        head += ["#", "# Tuned best or hand preset, whichever scores better on the pool (pool_score_presets.py):"]
        for m, c in chosen.items():
            extra = ", ".join(f"{k} = {v!r}" for k, v in sorted(c["overrides"].items()))
            verdict = "runs the preset" if c["kind"] == "preset" else "runs the tuned best"
            head.append(f"#   {m}: preset {c['preset']!r}{f' ({extra})' if extra else ''}: pool {c['value']:.4f} "
                        f"vs tuned best {c['tuned_best']:.4f} -> {verdict}")
    if missing:
        head += [
            "#",
            f"# NOT YET TUNED ({len(missing)} of {len(methods)}): these run their defaults, and the report's settings table",
            "# says \"defaults\" for them, until their studies land and this file is regenerated:",
            f"#   {', '.join(missing)}",
            f"#   metarec tune --methods {','.join(missing)} --trials {budget} --dataset {dataset} --data-dir ../shared/data \\",
            f"#       --tuning-fraction {pool.get('tuning_fraction')} --jobs 2 --threads 1 --out runs/tune-{name}-rest",
        ]
        if "s2meta" in missing:
            head += [
                "#   s2meta: one trial at its full 20 epochs is hours of CPU (docs/methods/s2meta.md); tune it with",
                "#   --epochs N (reduced epochs per trial, the same trial budget) or a smaller budget declared with",
                "#   --budget-for s2meta=N --why s2meta=..., then --set s2meta.epochs=20 here to run the full schedule.",
            ]
    head += [
        "#",
        "# Run (then commit the folder with NOTES.md: machine, wall times):",
        f"#   metarec bench -c benchmarks/configs/fair-{name}.toml --data-dir ../shared/data --jobs 2 --threads 1 \\",
        f"#       --out benchmarks/results/fair-{name}-<date>",
        "",
    ]
    lines = head + toml_table("bench", {"methods": methods, "dataset": dataset, "seeds": seeds, "k": 3, "clip_size": 5,
                                        "n_boot": 1000, "ci_level": 0.95})
    lines += toml_table("bench.protocol", {"tuning_fraction": pool.get("tuning_fraction"),
                                           "tuning_seed": pool.get("tuning_seed", 0)})
    for m in methods:
        if m not in studies:
            continue
        lines += toml_table(f"methods.{m}", {**studies[m]["settings"], **sets.get(m, {})})
        prov = {**studies[m]["provenance"], "study_path": studies[m]["study_path"]}
        if "chosen" in studies[m]:
            c = studies[m]["chosen"]
            prov |= {"chosen": c["kind"], "preset_scored": c["preset"], "preset_value": c["value"],
                     "presets_json": c["presets_json"]}
        lines += toml_table(f"provenance.{m}", prov)
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("tune_dirs", nargs="*", type=Path, help="metarec tune folders (or their best.toml)")
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--name", required=True, help="short name in file names: fair-<name>.toml (ml1m, yelp)")
    ap.add_argument("--budget", type=int, required=True, help="trials per method, the same for all")
    ap.add_argument("--budget-for", action="append", default=[], metavar="METHOD=N")
    ap.add_argument("--why", action="append", default=[], metavar="METHOD=TEXT")
    ap.add_argument("--set", dest="sets", action="append", default=[], metavar="METHOD.KEY=VALUE")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--tuning-fraction", type=float, default=0.1, help="the pool when no study is given yet")
    ap.add_argument("--require-all", action="store_true", help="fail if a registered method has no study")
    args = ap.parse_args(argv)
    from metarec.config import parse_overrides
    from metarec.registry import learners_for_protocol

    try:
        registered = set(learners_for_protocol("user-cold"))
        methods = [m for m in ORDER if m in registered] + sorted(registered - set(ORDER))
        studies = collect(args.tune_dirs, args.dataset)
        unknown = sorted(set(studies) - registered)
        if unknown:
            raise FairConfigError(f"studies of methods that are not registered user-task methods: {unknown}")
        budget_for = {m: int(n) for m, n in _parse_pairs(args.budget_for, "--budget-for").items()}
        why = _parse_pairs(args.why, "--why")
        sets: dict[str, dict[str, Any]] = {}
        for item in args.sets:
            (m, kv), = parse_overrides([item]).items()
            if m not in registered or not isinstance(kv, dict):
                raise FairConfigError(f"--set {item!r}: expected METHOD.KEY=VALUE with a registered METHOD")
            sets.setdefault(m, {}).update(kv)
        missing = [m for m in methods if m not in studies]
        if args.require_all and missing:
            raise FairConfigError(f"--require-all: no study for {', '.join(missing)}")
        text = render(args.dataset, args.name, args.budget, studies, methods, budget_for=budget_for, why=why,
                      sets=sets, seeds=[int(s) for s in args.seeds.split(",")], tuning_fraction=args.tuning_fraction)
    except (FairConfigError, ValueError) as exc:
        print(f"fair_config.py: error: {exc}", file=sys.stderr)
        return 2
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
