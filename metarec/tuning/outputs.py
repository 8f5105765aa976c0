"""What a tune leaves in its folder, rebuilt from the journal at any time.

Per method, ``<out>/<method>/``:

* ``best.toml`` -- the best trial's settings as a ``metarec bench -c`` layer: the protocol's pool
  keys (so no bench test user is a pool user), the method's preset and values, and a
  ``[provenance.<method>]`` table (study, trials, budget, pool) that ``metarec bench`` records;
* ``trials.json`` / ``trials.csv`` -- every trial: state, value, settings, epochs, time, error;
* ``history.png`` / ``.svg`` -- the value of each trial with the best so far, and the settings'
  importances (Optuna's fANOVA evaluator, seeded);
* ``timing-worker<i>.json`` -- per trial, time in the trial's own work and in Optuna
  (sampling, storage, pruning), written by the workers.

And ``<out>/best.toml`` (every method; what ``metarec bench --tuned <out>`` reads),
``<out>/summary.json`` and ``<out>/summary.md`` (the table ``metarec report <out>`` prints).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

from metarec.bench.results import read_json, write_json, write_text
from metarec.tuning.space import decode_params

SUMMARY_FORMAT = "metarec-tune-summary-1"


# ---------------------------------------------------------------------------- TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            return {math.inf: "inf", -math.inf: "-inf"}.get(v, "nan")
        text = repr(v)
        return text if any(ch in text for ch in ".en") else text + ".0"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def _toml_table(name: str, values: Mapping[str, Any]) -> list[str]:
    lines = [f"[{name}]"]
    for k, v in values.items():
        if v is None:
            continue  # TOML has no null; a search space never draws None (metarec.tuning.space)
        key = k if k.replace("_", "").replace("-", "").isalnum() else json.dumps(k)
        lines.append(f"{key} = {_toml_value(v)}")
    return lines + [""]


#: Public name of the table writer (benchmarks/fair_config.py writes bench configs with it).
toml_table = _toml_table


def _method_key(method: str) -> str:
    return method if method.replace("_", "").replace("-", "").isalnum() else json.dumps(method)


def best_toml(entries: Sequence[Mapping[str, Any]], tune: Mapping[str, Any]) -> str:
    """A bench config layer with the best settings of ``entries`` (summary rows that have a best trial)."""
    bench = tune["config"]["bench"]
    protocol = dict(bench.get("protocol") or {})
    rows = [e for e in entries if e.get("best_settings") is not None]
    head = [
        f"# metarec tune: best settings on {bench.get('dataset')}'s tuning pool "
        f"({tune.get('pool', {}).get('tuning_users')} users, never a test user of any seed).",
        f"#   metarec bench --tuned {tune.get('out', '<this folder>')}   (or: metarec bench -c this-file.toml)",
        "",
    ]
    lines = head + _toml_table("bench", {"dataset": bench.get("dataset"), "methods": [e["method"] for e in rows]})
    lines += _toml_table("bench.protocol", protocol)
    for e in rows:
        values = {**({"preset": e["preset"]} if e.get("preset") else {}), **e["fixed"], **e["best_settings"]}
        lines += _toml_table(f"methods.{_method_key(e['method'])}", values)
        lines += _toml_table(f"provenance.{_method_key(e['method'])}", e["provenance"])
    return "\n".join(lines)


# ---------------------------------------------------------------------------- trials


def trial_records(study: Any, space: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every trial of ``study`` as a plain dict (settings decoded to config values)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        out.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "params": decode_params(t.params, space),
            "epochs_done": ua.get("epochs_done"),
            "trial_s": ua.get("trial_s"),
            "worker": ua.get("worker"),
            #: where it ran: host, pid and, in a Ray task, the Ray node id
            "node": ua.get("node") or {},
            "history": ua.get("history", []),
            "error": ua.get("error"),
            "interrupted": bool(ua.get("interrupted", False)),
            "retry_of": ua.get("retry_of"),
            "datetime_start": t.datetime_start.isoformat() if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat() if t.datetime_complete else None,
        })
    return out


def trials_csv(records: Sequence[Mapping[str, Any]], space: Mapping[str, Any]) -> str:
    """One row per trial; settings as one column each (lists as JSON)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    keys = list(space)
    w.writerow(["number", "state", "value", "epochs_done", "trial_s", "worker", "node", *keys, "error"])
    for r in records:
        w.writerow([
            r["number"], r["state"], "" if r["value"] is None else repr(float(r["value"])), r.get("epochs_done") or "",
            "" if r.get("trial_s") is None else r["trial_s"], "" if r.get("worker") is None else r["worker"],
            (r.get("node") or {}).get("ray_node_id") or (r.get("node") or {}).get("host", ""),
            *[json.dumps(r["params"][k]) if isinstance(r["params"].get(k), (list, tuple)) else r["params"].get(k, "")
              for k in keys],
            (r.get("error") or "").splitlines()[0] if r.get("error") else "",
        ])
    return buf.getvalue()


def overhead(out: str | Path, method: str) -> dict[str, Any]:
    """Optuna's share of the trials' time, from the workers' timing files.

    Overhead per trial = ask (sampler + storage) + suggest (sampling the values) + tell (storage)
    + report/should_prune after each epoch (pruning); trial time = the whole trial from ask to tell.
    Only fully timed trials count (metarec 0.1.0 before this fix kept no per-part timings for
    pruned and failed trials; ``trials_untimed`` says how many were left out).
    """
    rows: list[dict[str, Any]] = []
    for path in sorted((Path(out) / method).glob("timing-worker*.json")):
        rows.extend(read_json(path).get("trials", []))
    untimed = sum(1 for r in rows if "suggest_s" not in r)
    rows = [r for r in rows if "suggest_s" in r]
    if not rows:
        return {}
    parts = {k: sum(float(r.get(k, 0.0)) for r in rows) for k in ("ask_s", "suggest_s", "tell_s", "pruning_s")}
    total_overhead = sum(parts.values())
    total_trial = sum(float(r["trial_s"]) + float(r["ask_s"]) + float(r["tell_s"]) for r in rows)
    ratios = sorted(
        (float(r["ask_s"]) + float(r.get("suggest_s", 0)) + float(r["tell_s"]) + float(r.get("pruning_s", 0)))
        / max(float(r["trial_s"]) + float(r["ask_s"]) + float(r["tell_s"]), 1e-12)
        for r in rows
    )
    return {
        "trials_timed": len(rows),
        "trials_untimed": untimed,
        "overhead_s": round(total_overhead, 4),
        "trial_s": round(total_trial, 4),
        "overhead_fraction": total_overhead / max(total_trial, 1e-12),
        "median_fraction": ratios[len(ratios) // 2],
        "max_fraction": ratios[-1],
        "per_trial_overhead_s": total_overhead / len(rows),
        **{k: round(v, 4) for k, v in parts.items()},
    }


# ---------------------------------------------------------------------------- plot


def plot_study(study: Any, records: Sequence[Mapping[str, Any]], stem: Path, title: str, direction: str) -> list[Path]:
    """History (every trial's value, best so far, pruned and failed marked) and importances."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    done = [r for r in records if r["state"] in ("COMPLETE", "PRUNED") and r["value"] is not None]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    comp = [r for r in done if r["state"] == "COMPLETE"]
    ax.scatter([r["number"] for r in comp], [r["value"] for r in comp], s=22, label="complete", color="tab:blue")
    pr = [r for r in done if r["state"] == "PRUNED"]
    if pr:
        ax.scatter([r["number"] for r in pr], [r["value"] for r in pr], s=22, marker="x", color="tab:gray",
                   label="pruned (last reported)")
    failed = [r for r in records if r["state"] == "FAIL"]
    for r in failed:
        ax.axvline(r["number"], color="tab:red", alpha=0.25, lw=1)
    best, xs, ys = None, [], []
    for r in sorted(comp, key=lambda r: r["number"]):
        v = r["value"]
        best = v if best is None else (min(best, v) if direction == "minimize" else max(best, v))
        xs.append(r["number"])
        ys.append(best)
    if xs:
        ax.step(xs, ys, where="post", color="tab:orange", label="best so far")
    ax.set_xlabel("trial" + (" (red lines: failed)" if failed else ""))
    ax.set_ylabel(title.split(" · ")[-1])
    ax.set_title(title)
    ax.legend(fontsize=8)
    importances: dict[str, float] = {}
    try:
        import optuna

        if len(comp) >= 2:
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except Exception:  # importances need varied complete trials; the history is still useful
        importances = {}
    if importances:
        names = list(importances)[::-1]
        ax2.barh(names, [importances[n] for n in names], color="tab:green")
        ax2.set_xlabel("importance (fANOVA)")
    else:
        ax2.text(0.5, 0.5, "importances need at least\ntwo complete trials", ha="center", va="center")
        ax2.set_axis_off()
    fig.tight_layout()
    paths = []
    for fmt in ("png", "svg"):
        p = stem.with_suffix(f".{fmt}")
        fig.savefig(p, dpi=110)
        paths.append(p)
    plt.close(fig)
    return paths


# ---------------------------------------------------------------------------- per method and summary


#: A gap longer than this with no trial running is time the study was stopped (between the
#: sessions of a resumed tune), not Optuna's work between trials, and is left out of its wall time.
IDLE_GAP_S = 60.0


def active_seconds(intervals: Sequence[tuple[Any, Any]], idle_gap_s: float = IDLE_GAP_S) -> float | None:
    """Wall time of a study from its trials' ``(start, end)`` datetimes: the span of each stretch
    of activity, stretches split at gaps over ``idle_gap_s`` with no trial running.

    A study run in one go gets its first start to its last end; a resumed one does not count the
    time it lay stopped. Interrupted trials are left out by the caller: their end is the moment
    ``--resume`` marked them failed, not the moment they stopped.
    """
    if not intervals:
        return None
    total = 0.0
    lo = hi = None
    for start, end in sorted(intervals):
        if hi is not None and (start - hi).total_seconds() > idle_gap_s:
            total += (hi - lo).total_seconds()
            lo = hi = None
        if lo is None:
            lo, hi = start, end
        else:
            hi = max(hi, end)
    return total + (hi - lo).total_seconds()


def method_summary(study: Any, tune: Mapping[str, Any], method: str, space: Mapping[str, Any],
                   fixed: Mapping[str, Any], preset: str | None, out: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """One summary row for ``method`` and its trial records."""
    from datetime import datetime

    records = trial_records(study, space)
    cfg = tune["config"]
    counts = {s: sum(1 for r in records if r["state"] == s and not r["interrupted"])
              for s in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    interrupted = sum(1 for r in records if r["interrupted"])
    comp = [r for r in records if r["state"] == "COMPLETE"]
    sign = 1 if cfg["metric"] == "mae" else -1
    best = min(comp, key=lambda r: (sign * r["value"], r["number"])) if comp else None
    span = active_seconds([
        (datetime.fromisoformat(r["datetime_start"]), datetime.fromisoformat(r["datetime_complete"]))
        for r in records if r["datetime_start"] and r["datetime_complete"] and not r["interrupted"]
    ])
    pool = tune.get("pool", {})
    budget = int(cfg.get("trials_per_method", {}).get(method, cfg["trials"]))
    protocol = cfg["bench"].get("protocol") or {}
    provenance = {
        "source": "tuned",
        "tune_dir": str(tune.get("out", out)),
        "study": method,
        "dataset": cfg["bench"].get("dataset"),
        "metric": f"pool {cfg['metric']}" + (f"@{cfg['bench'].get('k', 3)}" if cfg["metric"] == "ndcg" else ""),
        "budget": budget,
        "trials": counts["COMPLETE"] + counts["PRUNED"] + counts["FAIL"],
        "complete": counts["COMPLETE"],
        "pruned": counts["PRUNED"],
        "failed": counts["FAIL"],
        "best_trial": None if best is None else best["number"],
        "best_value": None if best is None else float(best["value"]),
        "pool_users": pool.get("tuning_users"),
        "tuning_fraction": protocol.get("tuning_fraction"),
        "tuning_seed": protocol.get("tuning_seed", 0),
        "split_seed": cfg.get("split_seed", 0),
        "seed": cfg.get("seed", 0),
        "sampler": "TPE",
        "pruner": cfg.get("pruner"),
        "wall_time_s": None if span is None else round(span, 1),
    }
    row = {
        "method": method,
        "budget": budget,
        "trials": provenance["trials"],
        "complete": counts["COMPLETE"],
        "pruned": counts["PRUNED"],
        "failed": counts["FAIL"],
        "running": counts["RUNNING"],
        "interrupted": interrupted,
        "best_trial": provenance["best_trial"],
        "best_value": provenance["best_value"],
        "wall_time_s": provenance["wall_time_s"],
        "trial_time_s": round(sum(float(r["trial_s"] or 0) for r in records), 1),
        "best_settings": None if best is None else best["params"],
        "preset": preset,
        "fixed": dict(fixed),
        "provenance": provenance,
        "overhead": overhead(out, method),
        "errors": sorted({(r["error"] or "").splitlines()[0] for r in records if r["state"] == "FAIL" and r["error"]
                          and not r["interrupted"]}),
    }
    return row, records


def write_method_outputs(study: Any, tune: Mapping[str, Any], method: str, space: Mapping[str, Any],
                         fixed: Mapping[str, Any], preset: str | None, out: Path) -> dict[str, Any]:
    """Write ``<out>/<method>/`` (best.toml, trials.json/csv, history plot); returns the summary row."""
    row, records = method_summary(study, tune, method, space, fixed, preset, out)
    d = out / method
    d.mkdir(parents=True, exist_ok=True)
    write_json(d / "trials.json", {"method": method, "metric": tune["config"]["metric"], "direction": study.direction.name.lower(),
                                   "search_space": space, "fixed": dict(fixed), "preset": preset, "trials": records})
    write_text(d / "trials.csv", trials_csv(records, space))
    if row["best_settings"] is not None:
        write_text(d / "best.toml", best_toml([row], tune))
    metric = tune["config"]["metric"]
    plot_study(study, records, d / "history", f"{method} · pool {metric}", study.direction.name.lower())
    return row


def write_summary(rows: Sequence[Mapping[str, Any]], tune: Mapping[str, Any], out: Path) -> None:
    """``summary.json``, ``summary.md`` and the combined ``best.toml`` of a tune folder."""
    write_json(out / "summary.json", {"format": SUMMARY_FORMAT, "tune": tune, "methods": list(rows)})
    write_text(out / "summary.md", markdown_summary(rows, tune))
    if any(r.get("best_settings") is not None for r in rows):
        write_text(out / "best.toml", best_toml(rows, tune))


def _fmt_settings(s: Mapping[str, Any] | None) -> str:
    if not s:
        return "–"

    def f(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.3g}"
        if isinstance(v, (list, tuple)):
            return "[" + ",".join(map(str, v)) + "]"
        return str(v)

    return ", ".join(f"{k}={f(v)}" for k, v in s.items())


def summary_rows_table(rows: Sequence[Mapping[str, Any]], metric: str) -> tuple[list[str], list[list[str]]]:
    """Header and cells of the tuning summary table (method, trials, pruned, best value, wall time, best settings)."""
    header = ["method", "trials", "complete", "pruned", "failed", f"best pool {metric}", "best trial",
              "wall time s", "overhead", "best settings"]
    body = []
    for r in rows:
        oh = r.get("overhead") or {}
        body.append([
            r["method"], f"{r['trials']}/{r['budget']}", str(r["complete"]), str(r["pruned"]), str(r["failed"]),
            "–" if r["best_value"] is None else f"{r['best_value']:.4f}",
            "–" if r["best_trial"] is None else f"#{r['best_trial']}",
            "–" if r["wall_time_s"] is None else f"{r['wall_time_s']:.0f}",
            "–" if not oh else f"{100 * oh['overhead_fraction']:.2f} %",
            _fmt_settings(r.get("best_settings")),
        ])
    return header, body


def markdown_summary(rows: Sequence[Mapping[str, Any]], tune: Mapping[str, Any]) -> str:
    """The tuning summary as Markdown: how the study was set up, then one row per method."""
    cfg = tune["config"]
    bench = cfg["bench"]
    pool = tune.get("pool", {})
    header, body = summary_rows_table(rows, cfg["metric"])
    out = [f"# metarec tune: {bench.get('dataset')}", ""]
    if tune.get("command"):
        out += ["```", " ".join(tune["command"]), "```", ""]
    scen = pool.get("query_scenarios_tuning") or {}
    out += [
        f"- tuning pool: {pool.get('tuning_users')} users ({pool.get('tuning_users_warm')} warm, "
        f"{pool.get('tuning_users_cold')} cold; query ratings {', '.join(f'{k} {v}' for k, v in scen.items())}), "
        f"tuning_fraction {(bench.get('protocol') or {}).get('tuning_fraction')}, pool seed "
        f"{(bench.get('protocol') or {}).get('tuning_seed', 0)}: never a test user of any run seed",
        f"- trials train on the {pool.get('train_users')} training users of split seed {cfg.get('split_seed', 0)} "
        f"and score overall {cfg['metric'].upper()} on the pool's query ratings",
        f"- budget: {cfg['trials']} trials per method"
        + (f" (overrides: {cfg['trials_per_method']})" if cfg.get("trials_per_method") else "")
        + f"; TPE sampler (seed {cfg.get('seed', 0)}, {cfg.get('startup_trials')} random start-up trials), "
        f"{cfg.get('pruner')} pruner on the per-epoch pool score"
        + (f"; bench-wide epochs {bench.get('epochs')}" if bench.get("epochs") is not None else ""),
        f"- jobs {bench.get('jobs')}, threads per trial {tune.get('threads_per_trial')}; "
        f"overhead = Optuna's time (sampling, storage, pruning) / trial time",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i in (0, len(header) - 1) else "---:" for i in range(len(header))) + "|",
    ]
    out += ["| " + " | ".join(row) + " |" for row in body]
    errors = [(r["method"], e) for r in rows for e in r.get("errors", [])]
    if errors:
        out += ["", "## Failed trials", ""] + [f"- **{m}**: `{e}`" for m, e in errors]
    return "\n".join(out) + "\n"


def rich_summary(rows: Sequence[Mapping[str, Any]], metric: str, title: str = "metarec tune") -> Any:
    """The tuning summary as a rich Table."""
    from rich.table import Table

    header, body = summary_rows_table(rows, metric)
    table = Table(title=title)
    for i, h in enumerate(header):
        table.add_column(h, justify="left" if i in (0, len(header) - 1) else "right", overflow="fold")
    for row in body:
        table.add_row(*row)
    return table


def is_tune_dir(path: str | Path) -> bool:
    """Whether ``path`` is a ``metarec tune`` output folder."""
    return (Path(path) / "tune.json").exists()


__all__ = [
    "active_seconds",
    "best_toml",
    "toml_table",
    "is_tune_dir",
    "markdown_summary",
    "method_summary",
    "overhead",
    "plot_study",
    "rich_summary",
    "trial_records",
    "trials_csv",
    "write_method_outputs",
    "write_summary",
]
