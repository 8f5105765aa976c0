"""A synthetic dataset with planted structure, for tests and offline demos.

Users belong to one of ``n_types`` hidden preference types; a profile feature (``segment``)
reveals the type with probability ``profile_signal``. Each type likes some genres and dislikes
others; items have a genre, tags correlated with the genre and a numeric quality. A rating is::

    round(3 + affinity[type, genre] + 0.4 * quality + user_bias + noise), clipped to 1..5

so a model that reads the profile and the item features -- or adapts to a user's support
ratings -- beats the global mean by a wide margin, while the global mean cannot. Item
popularity is skewed (some items stay cold) and users join over time (the late ones are cold),
so every cold-start scenario is populated. The planted truth is in ``data.extras``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from metarec.config import Rule, ValidatedConfig, setting
from metarec.data.base import InteractionData
from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable


@dataclass(frozen=True)
class SyntheticOptions(ValidatedConfig):
    """The arguments of :func:`make_synthetic`, as a config (``[loader]`` table of ``load_split``)."""

    n_users: int = setting(400, ge=2)
    n_items: int = setting(300, ge=1)
    n_types: int = setting(3, ge=1)
    n_genres: int = setting(6, ge=1)
    n_tags: int = setting(12, ge=1)
    ratings_per_user: int = setting(24, ge=1)
    profile_signal: float = setting(0.9, ge=0, le=1)
    affinity_scale: float = setting(1.5, ge=0)
    noise: float = setting(0.4, ge=0)
    seed: int = setting(0, ge=0)

    rules = (Rule("n_items >= ratings_per_user", lambda c: c.n_items >= c.ratings_per_user, ("n_items", "ratings_per_user")),)


def make_synthetic(
    n_users: int = 400,
    n_items: int = 300,
    *,
    n_types: int = 3,
    n_genres: int = 6,
    n_tags: int = 12,
    ratings_per_user: int = 24,
    profile_signal: float = 0.9,
    affinity_scale: float = 1.5,
    noise: float = 0.4,
    seed: int = 0,
) -> InteractionData:
    """Generate a dataset with planted user types; deterministic for a ``seed``."""
    if n_types < 1 or n_genres < 1 or n_users < 2 or n_items < ratings_per_user:
        raise ValueError(
            "need n_types >= 1, n_genres >= 1, n_users >= 2 and n_items >= ratings_per_user; "
            f"got {n_types}, {n_genres}, {n_users}, {n_items} (ratings_per_user={ratings_per_user})"
        )
    if not 0.0 <= profile_signal <= 1.0:
        raise ValueError(f"profile_signal must be in [0, 1], got {profile_signal}")
    rng = np.random.default_rng(seed)

    # --- users: hidden type, a profile that reveals it (noisily), irrelevant noise features
    user_type = rng.integers(n_types, size=n_users)
    reveal = rng.random(n_users) < profile_signal
    segment = np.where(reveal, user_type, rng.integers(n_types, size=n_users))
    age_group = rng.integers(5, size=n_users)
    activity = rng.normal(size=n_users).astype(np.float32)
    user_bias = rng.normal(0.0, 0.25, size=n_users)

    # --- items: genre, tags correlated with genre, numeric quality
    genre = rng.integers(n_genres, size=n_items)
    max_tags = 3
    tags = np.full((n_items, max_tags), -1, dtype=np.int64)
    for i in range(n_items):
        k = rng.integers(1, max_tags + 1)
        own = genre[i] % n_tags
        others = rng.choice(n_tags, size=k - 1, replace=False) if k > 1 else np.array([], dtype=np.int64)
        chosen = np.unique(np.concatenate([[own], others]))[:max_tags]
        tags[i, : len(chosen)] = chosen
    quality = rng.normal(size=n_items).astype(np.float32)

    # --- preferences: each type has its own genre affinities
    affinity = rng.uniform(-affinity_scale, affinity_scale, size=(n_types, n_genres))

    # --- who rates what, when: skewed popularity, users join over time
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.8
    popularity = popularity[rng.permutation(n_items)]
    popularity /= popularity.sum()
    join_time = np.sort(rng.uniform(0, 1000, size=n_users))[rng.permutation(n_users)]
    users, items, ratings, times = [], [], [], []
    for u in range(n_users):
        chosen = rng.choice(n_items, size=ratings_per_user, replace=False, p=popularity)
        t = join_time[u] + np.cumsum(rng.exponential(1.0, size=ratings_per_user))
        mean = 3.0 + affinity[user_type[u], genre[chosen]] + 0.4 * quality[chosen] + user_bias[u]
        r = np.clip(np.rint(mean + rng.normal(0, noise, size=ratings_per_user)), 1, 5)
        users.append(np.full(ratings_per_user, u))
        items.append(chosen)
        ratings.append(r)
        times.append(t)
    user = np.concatenate(users)
    item = np.concatenate(items)
    rating = np.concatenate(ratings).astype(np.float32)
    time = np.concatenate(times)

    user_features = (
        Feature("segment", "categorical", tuple(f"s{k}" for k in range(n_types))),
        Feature("age_group", "categorical", tuple(f"a{k}" for k in range(5))),
        Feature("activity", "numeric"),
    )
    item_features = (
        Feature("genre", "categorical", tuple(f"g{k}" for k in range(n_genres))),
        Feature("tags", "multi_categorical", tuple(f"t{k}" for k in range(n_tags)), separator="|", max_values=max_tags),
        Feature("quality", "numeric"),
    )
    schema = FeatureSchema(user_features, item_features, 1.0, 5.0, name="synthetic")
    users_table = FeatureTable(
        user_features,
        {
            "segment": torch.as_tensor(segment, dtype=torch.long),
            "age_group": torch.as_tensor(age_group, dtype=torch.long),
            "activity": torch.as_tensor(activity),
        },
        ids=np.array([f"u{u}" for u in range(n_users)]),
    )
    items_table = FeatureTable(
        item_features,
        {
            "genre": torch.as_tensor(genre, dtype=torch.long),
            "tags": torch.as_tensor(tags, dtype=torch.long),
            "quality": torch.as_tensor(quality),
        },
        ids=np.array([f"i{i}" for i in range(n_items)]),
    )
    digest = hashlib.sha256(np.concatenate([user, item, rating.astype(np.int64)]).tobytes()).hexdigest()
    return InteractionData(
        name="synthetic",
        schema=schema,
        users=users_table,
        items=items_table,
        user=user,
        item=item,
        rating=rating,
        time=time,
        order=np.arange(len(rating)),
        checksum=f"sha256:{digest}",
        canonical=True,
        protocol_defaults={"user_state_rule": "time_quantile", "item_cold_max_ratings": 10},
        notes=[f"synthetic: seed={seed}, {n_types} planted user types"],
        extras={"user_type": user_type, "affinity": affinity, "segment_reveals_type": reveal},
    )
