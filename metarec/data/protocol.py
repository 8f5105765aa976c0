"""The MAMO paper's cold-start protocol (§3.1.3-3.1.4, appendix A.1), every choice a config key.

Defaults are the paper's:

* per user the first 20 ratings by time. **Tie rule:** ratings with equal time keep their order
  in the source file (``InteractionData.order``), i.e. a stable sort by (time, file position);
* support = the first 15 of those, query = the last 5 (``n_support`` 5-15 keeps the query fixed
  to the last 5);
* users split 80:20 into training and test users by a permutation drawn from the seed; every user
  with enough ratings is in exactly one part and users with too few are counted in
  ``info["users_dropped_too_few_ratings"]`` (nothing is dropped silently);
* optionally (``tuning_fraction`` > 0, off in the paper's protocol) a *tuning pool*: a fixed share of
  the users drawn once with its own seed (``tuning_seed``, not the run seed), stratified over warm
  and cold users, set aside before the seed's split -- so it is never a training, validation or
  test user of any run seed, and settings tuned on it cannot have seen a test user;
* warm/cold users by the dataset's rule. MovieLens: warm iff the user's first rating is strictly
  before the split time, where the split time is the time of the rating at position
  ``round(0.8 * N)`` (0-based) of *all* N ratings sorted by time -- exactly how MAMO's reference
  code computes it (on ML-1M: 975768738 = 2000-12-02 14:52:18 UTC; the code's comment,
  "2000-12-03 01:52:18", is the same instant in UTC+11 local time). Book-Crossing: the first 90 % of the
  kept users in user-id order (the loader orders its user table by numeric User-ID);
* warm/cold items counted on the trimmed table (all kept users' 20 ratings, training and test
  users alike): warm iff MORE than 10 ratings on MovieLens (so exactly 10 is cold, as in the
  code), more than 5 on Book-Crossing;
* a scenario label for every query rating (code = 2 * user_cold + item_cold).
"""

from __future__ import annotations

from metarec.errors import UserError

from dataclasses import asdict, dataclass, fields
from typing import Any, Literal

import numpy as np
import torch

from metarec.config import Rule, ValidatedConfig, setting
from metarec.data.base import InteractionData
from metarec.runtime import numpy_generator
from metarec.schema import SCENARIOS
from metarec.tasks import TaskSet


class ProtocolError(UserError, ValueError):
    """The data cannot satisfy the protocol as configured (the message says what to change)."""


@dataclass(frozen=True)
class ProtocolConfig(ValidatedConfig):
    """Every choice of the protocol. ``None`` means "the dataset's own default"."""

    #: Ratings kept per user (the earliest by time); users with fewer are dropped (and counted).
    ratings_per_user: int = setting(20, ge=2)
    #: Support ratings per user (paper: 15; §3.2.1 varies 5-15 with the query fixed).
    n_support: int = setting(15, ge=1)
    #: Query ratings per user: always the LAST ``n_query`` of the kept ratings.
    n_query: int = setting(5, ge=1)
    #: When ``n_support + n_query < ratings_per_user``: take the support from the ``first``
    #: kept ratings or from the ones ``last`` before the query.
    support_position: Literal["first", "last"] = "first"
    #: Fraction of users that are training users.
    train_fraction: float = setting(0.8, gt=0, lt=1)
    #: Fraction of the training users held out for validation (0 = none, as in the paper).
    validation_fraction: float = setting(0.0, ge=0, lt=1)
    #: Share of the kept users set aside as the tuning pool (0 = none, the paper's protocol; ``metarec
    #: tune`` uses 0.1 when unset). Drawn once with ``tuning_seed``, stratified over warm/cold users;
    #: the run seed splits only the remaining users into train/test, so no run seed tests a pool user.
    tuning_fraction: float = setting(0.0, ge=0, lt=1)
    #: Seed of the tuning pool's draw: fixed, independent of the run seed.
    tuning_seed: int = setting(0, ge=0)
    #: ``time_quantile`` (warm iff first rating before the quantile time of all ratings; needs a
    #: real time column), ``id_order`` (the first ``user_warm_fraction`` of users in table order
    #: are warm) or ``random`` (a seeded random ``user_warm_fraction`` of the kept users are
    #: warm, drawn from ``order_seed``). Dataset default; data without time defaults to ``random``.
    user_state_rule: Literal["time_quantile", "id_order", "random"] | None = None
    user_time_quantile: float = setting(0.8, gt=0, lt=1)
    user_warm_fraction: float = setting(0.9, gt=0, lt=1)
    #: The order used by ``id_order``: ``table`` (the user table's order; Book-Crossing's loader
    #: sorts it by numeric User-ID, the paper's rule) or ``first_rating`` (by each user's first
    #: rating in (time, file position) order, i.e. order of first appearance).
    id_order_by: Literal["table", "first_rating"] = "table"
    #: An item is warm iff it has MORE than this many ratings in the trimmed table.
    item_cold_max_ratings: int | None = setting(None, ge=0)
    #: What to do with users with fewer than ``ratings_per_user`` ratings: drop and count, or fail.
    short_users: Literal["drop", "error"] = "drop"
    #: Order of each user's ratings ("the first 20", support before query): ``time`` (by time,
    #: then file position) or ``random`` (a seeded permutation drawn from ``order_seed``, for
    #: data without time). Dataset default; data without time defaults to ``random``.
    rating_order: Literal["time", "random"] | None = None
    #: Seed of the ``random`` rating order and ``random`` user-state rule. Fixed across run seeds
    #: on purpose: like a time order, it defines the data, while the run seed draws the
    #: train/test users and the initialisation.
    order_seed: int = 0

    rules = (
        Rule("n_support + n_query <= ratings_per_user",
             lambda c: c.n_support + c.n_query <= c.ratings_per_user, ("n_support", "n_query", "ratings_per_user")),
    )

    def resolved(self, data: InteractionData) -> "ProtocolConfig":
        """This config with the dataset's defaults filled in for every ``None``."""
        d = asdict(self)
        bad = sorted(set(data.protocol_defaults) - set(dataset_default_keys()))
        if bad:
            raise ProtocolError(
                f"dataset {data.name!r} sets protocol key(s) {', '.join(bad)}, which a dataset cannot default; "
                f"a dataset may set only {', '.join(dataset_default_keys())} (pass the others in the ProtocolConfig)"
            )
        defaults = {**generic_defaults(data), **data.protocol_defaults}
        for key, value in d.items():
            if value is None:
                if key not in defaults:
                    raise ProtocolError(f"protocol key {key!r} has no value and dataset {data.name!r} gives no default")
                d[key] = defaults[key]
        return ProtocolConfig(**d)


def generic_defaults(data: InteractionData) -> dict[str, Any]:
    """Defaults for a dataset that sets none: by time when it has a time column, seeded random otherwise."""
    timed = data.has_time
    return {
        "user_state_rule": "time_quantile" if timed else "random",
        "rating_order": "time" if timed else "random",
        "item_cold_max_ratings": 10,
    }


def defaults_applied(config: ProtocolConfig | None, data: InteractionData) -> dict[str, str]:
    """Where each dataset-default key's value came from: ``config``, the dataset's default, or the generic one."""
    cfg = config or ProtocolConfig()
    out = {}
    for key in dataset_default_keys():
        if getattr(cfg, key) is not None:
            out[key] = "config"
        elif key in data.protocol_defaults:
            out[key] = "dataset default"
        else:
            out[key] = "generic default for data " + ("with" if data.has_time else "without") + " a time column"
    return out


def dataset_default_keys() -> tuple[str, ...]:
    """Protocol keys whose default (``None``) means "the dataset's own value"."""
    return tuple(f.name for f in fields(ProtocolConfig) if f.default is None)


@dataclass
class Split:
    """Training, test (and optional validation and tuning-pool) tasks with a report of how they were made."""

    train: TaskSet
    test: TaskSet
    validation: TaskSet | None
    info: dict[str, Any]
    #: The tuning pool (``tuning_fraction`` > 0): the same users for every run seed.
    tuning: TaskSet | None = None


def trim_per_user(
    data: InteractionData, ratings_per_user: int, rating_order: str = "time", order_seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows of each user's first ``ratings_per_user`` ratings by (time, file position), or in a
    seeded random order (``rating_order="random"``).

    Returns ``(kept_users, rows [U, R], short_users)``: ``rows[k]`` are the rating indices of
    ``kept_users[k]`` in that order; users with fewer ratings are listed in ``short_users``.
    """
    if rating_order == "time":
        order = np.lexsort((data.order, data.time, data.user))  # by user, then time, then file position
    elif rating_order == "random":
        # one permutation of the whole log keyed by file position, so it does not depend on how the loader sorted rows
        key = np.empty(data.n_ratings, dtype=np.int64)
        key[np.argsort(data.order, kind="stable")] = numpy_generator(order_seed, "rating-order").permutation(data.n_ratings)
        order = np.lexsort((key, data.user))
    else:
        raise ProtocolError(f"unknown rating_order {rating_order!r}; use time or random")
    users_sorted = data.user[order]
    uniq, start, counts = np.unique(users_sorted, return_index=True, return_counts=True)
    enough = counts >= ratings_per_user
    rows = start[enough, None] + np.arange(ratings_per_user)[None, :]
    return uniq[enough], order[rows], uniq[~enough]


def user_cold_flags(data: InteractionData, users: np.ndarray, cfg: ProtocolConfig) -> tuple[np.ndarray, dict[str, Any]]:
    """Cold flag per user in ``users`` under ``cfg.user_state_rule``, plus what was used."""
    if cfg.user_state_rule == "time_quantile":
        if not data.has_time or (len(data.time) and float(data.time.min()) == float(data.time.max())):
            why = "has no time column" if not data.has_time else "has the same time on every rating"
            raise ProtocolError(
                f"{data.name}: user_state_rule 'time_quantile' needs rating times, but the data {why}; "
                "use user_state_rule = \"random\" (seeded, user_warm_fraction warm) or \"id_order\""
            )
        times = np.sort(data.time, kind="stable")
        pos = min(int(round(cfg.user_time_quantile * len(times))), len(times) - 1)
        split_time = float(times[pos])
        first = np.full(len(data.users), np.inf)
        np.minimum.at(first, data.user, data.time)
        cold = ~(first[users] < split_time)
        return cold, {"split_time": split_time, "split_time_utc": _utc(split_time)}
    if cfg.user_state_rule == "id_order":
        n_warm = int(cfg.user_warm_fraction * len(users))
        if cfg.id_order_by == "table":
            key = users.astype(np.float64)
        elif cfg.id_order_by == "first_rating":
            # position of each user's first rating in the global (time, file position) order
            order = np.lexsort((data.order, data.time))
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order))
            first = np.full(len(data.users), np.iinfo(np.int64).max)
            np.minimum.at(first, data.user, rank)
            key = first[users].astype(np.float64)
        else:
            raise ProtocolError(f"unknown id_order_by {cfg.id_order_by!r}; use table or first_rating")
        ranks = np.empty(len(users), dtype=np.int64)
        ranks[np.argsort(key, kind="stable")] = np.arange(len(users))
        return ranks >= n_warm, {"n_warm_by_id_order": n_warm}
    if cfg.user_state_rule == "random":
        n_warm = int(cfg.user_warm_fraction * len(users))
        cold = np.ones(len(users), dtype=bool)
        cold[numpy_generator(cfg.order_seed, "user-state").permutation(len(users))[:n_warm]] = False
        return cold, {"n_warm_by_random_rule": n_warm, "user_cold_fraction": round(1.0 - cfg.user_warm_fraction, 6)}
    raise ProtocolError(f"unknown user_state_rule {cfg.user_state_rule!r}; use time_quantile, id_order or random")


def tuning_pool(user_cold: np.ndarray, cfg: ProtocolConfig) -> np.ndarray:
    """Positions (into the kept users) of the tuning pool, sorted; empty when ``tuning_fraction`` is 0.

    Warm and cold users are drawn separately -- ``round(tuning_fraction * n)`` of each, at least
    one of each state that exists -- with a generator from ``tuning_seed`` alone, so the pool is
    the same for every run seed and holds both user states (and so every scenario the data has).
    """
    if cfg.tuning_fraction <= 0:
        return np.zeros(0, dtype=np.int64)
    gen = numpy_generator(cfg.tuning_seed, "tuning-pool")
    picked = []
    for state in (False, True):  # warm, then cold
        group = np.flatnonzero(user_cold == state)
        if len(group) == 0:
            continue
        n = max(1, int(round(cfg.tuning_fraction * len(group))))
        picked.append(gen.permutation(group)[:n])
    return np.sort(np.concatenate(picked)).astype(np.int64)


def _utc(t: float) -> str:
    """A timestamp in seconds as an ISO date/time in UTC (for reports; pseudo-times pass through)."""
    import datetime as _dt

    if not (np.isfinite(t) and 1e8 <= t <= 1e11):  # not epoch seconds (a pseudo-time such as a file position)
        return f"{t:g} (not a date)"
    return _dt.datetime.fromtimestamp(t, _dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def build_split(data: InteractionData, config: ProtocolConfig | None = None, *, seed: int = 0) -> Split:
    """Apply the protocol to ``data``; the user split depends only on ``seed``."""
    cfg = (config or ProtocolConfig()).resolved(data)
    users, rows, short = trim_per_user(data, cfg.ratings_per_user, cfg.rating_order, cfg.order_seed)
    if len(short) and cfg.short_users == "error":
        raise ProtocolError(
            f"{data.name}: {len(short)} users have fewer than {cfg.ratings_per_user} ratings "
            f"(first: user {data.users.ids[short[0]]}); set short_users='drop' to drop them"
        )
    if len(users) < 2:
        raise ProtocolError(
            f"{data.name}: only {len(users)} users have at least {cfg.ratings_per_user} ratings; "
            "lower ratings_per_user or use more data"
        )

    user_cold, user_rule_info = user_cold_flags(data, users, cfg)
    kept_items = data.item[rows].ravel()
    item_counts = np.bincount(kept_items, minlength=len(data.items))
    item_cold = item_counts <= cfg.item_cold_max_ratings  # over all items; only rated ones matter
    scen = (2 * user_cold[:, None].astype(np.int64) + item_cold[data.item[rows]].astype(np.int64))

    r = cfg.ratings_per_user
    q_cols = np.arange(r - cfg.n_query, r)
    if cfg.support_position == "first":
        s_cols = np.arange(cfg.n_support)
    else:
        s_cols = np.arange(r - cfg.n_query - cfg.n_support, r - cfg.n_query)

    pool_pos = tuning_pool(user_cold, cfg)
    # The seed splits the users outside the pool; without a pool this is exactly the paper's split.
    rest = np.setdiff1d(np.arange(len(users)), pool_pos) if len(pool_pos) else np.arange(len(users))
    perm = rest[numpy_generator(seed, "user-split").permutation(len(rest))]
    n_train = int(cfg.train_fraction * len(rest))
    train_pos, test_pos = perm[:n_train], perm[n_train:]
    n_val = int(round(cfg.validation_fraction * len(train_pos)))
    val_pos = train_pos[len(train_pos) - n_val :] if n_val else train_pos[:0]
    train_pos = train_pos[: len(train_pos) - n_val]
    if len(train_pos) == 0 or len(test_pos) == 0:
        raise ProtocolError(
            f"{data.name}: the split leaves no training or no test users; check train_fraction"
            + (f" and tuning_fraction ({cfg.tuning_fraction})" if len(pool_pos) else "")
        )

    def taskset(pos: np.ndarray, part: str) -> TaskSet:
        pos = np.sort(pos)  # tasks in user-table order: a stable, documented test-user order
        sel_rows = rows[pos]
        t = lambda a, dt: torch.as_tensor(np.ascontiguousarray(a), dtype=dt)  # noqa: E731
        ts = TaskSet(
            schema=data.schema,
            users=data.users,
            items=data.items,
            user_index=t(users[pos], torch.long),
            support_items=t(data.item[sel_rows[:, s_cols]], torch.long),
            support_ratings=t(data.rating[sel_rows[:, s_cols]], torch.float32),
            query_items=t(data.item[sel_rows[:, q_cols]], torch.long),
            query_ratings=t(data.rating[sel_rows[:, q_cols]], torch.float32),
            query_scenario=t(scen[pos][:, q_cols], torch.long),
            info={"part": part, "dataset": data.name, "checksum": data.checksum, "canonical": data.canonical},
        )
        return ts

    train, test = taskset(train_pos, "train"), taskset(test_pos, "test")
    validation = taskset(val_pos, "validation") if n_val else None
    tuning = taskset(pool_pos, "tuning") if len(pool_pos) else None
    rated = item_counts > 0
    info: dict[str, Any] = {
        "dataset": data.name,
        "seed": seed,
        "protocol": asdict(cfg),
        "protocol_defaults_from": defaults_applied(config, data),
        "time_source": "time column" if data.has_time else "none (file position only)",
        "users_total": len(data.users),
        "users_kept": int(len(users)),
        "users_dropped_too_few_ratings": int(len(short)),
        "users_without_ratings": int(len(data.users) - len(users) - len(short)),
        "users_warm": int((~user_cold).sum()),
        "users_cold": int(user_cold.sum()),
        "items_in_trimmed_table": int(rated.sum()),
        "items_warm": int((rated & ~item_cold).sum()),
        "items_cold": int((rated & item_cold).sum()),
        "train_users": len(train),
        "test_users": len(test),
        "validation_users": 0 if validation is None else len(validation),
        "query_scenarios_train": train.scenario_counts(),
        "query_scenarios_test": test.scenario_counts(),
        "query_scenarios_validation": None if validation is None else validation.scenario_counts(),
        "tuning_users": 0 if tuning is None else len(tuning),
        "tuning_users_warm": int((~user_cold[pool_pos]).sum()),
        "tuning_users_cold": int(user_cold[pool_pos].sum()),
        "query_scenarios_tuning": None if tuning is None else tuning.scenario_counts(),
        "load_drops": dict(data.drops),
        "checksum": data.checksum,
        "canonical": data.canonical,
        "data_notes": list(data.notes),
        **user_rule_info,
    }
    return Split(train=train, test=test, validation=validation, info=info, tuning=tuning)


__all__ = [
    "ProtocolConfig", "ProtocolError", "Split", "build_split", "dataset_default_keys", "defaults_applied",
    "generic_defaults", "trim_per_user", "tuning_pool", "SCENARIOS",
]
