"""A small item warm-up dataset with planted structure, for the item warm-up tests.

Each item belongs to one of ``n_cats`` categories (its only feature); its latent vector is the
category's centre plus a little noise, and its popularity bias is the category's plus noise.
Users have latent vectors and a random, uninformative ``segment`` feature. A click is drawn with
``sigmoid(3 u . v_item + 2 b_item)``. Item IDs are therefore informative and largely predictable
from the category, which is exactly what a feature-to-ID-embedding generator can exploit. Old
items get many ratings, new items 24..40 (so stage_size 6 leaves 6..22 test rows each).
"""

from __future__ import annotations

import numpy as np
import torch

from metarec.data.base import InteractionData
from metarec.schema import Feature, FeatureSchema
from metarec.tasks import FeatureTable


def make_warmup_data(n_users: int = 300, n_old: int = 60, n_new: int = 80, n_cats: int = 6, dim: int = 4,
                     seed: int = 0, has_time: bool = True) -> InteractionData:
    rng = np.random.default_rng(seed)
    n_items = n_old + n_new
    cat = rng.integers(0, n_cats, n_items)
    centres = rng.normal(0, 1, (n_cats, dim))
    cat_bias = rng.normal(0, 1, n_cats)
    v = centres[cat] + 0.3 * rng.normal(0, 1, (n_items, dim))
    b = cat_bias[cat] + 0.2 * rng.normal(0, 1, n_items)
    u = rng.normal(0, 1, (n_users, dim)) / np.sqrt(dim)
    users, items = [], []
    for i in range(n_items):
        n = int(rng.integers(90, 160)) if i < n_old else int(rng.integers(24, 41))
        who = rng.choice(n_users, size=n, replace=False)
        users.append(who)
        items.append(np.full(n, i))
    user = np.concatenate(users)
    item = np.concatenate(items)
    logit = 3 * (u[user] * v[item]).sum(1) + 2 * b[item]
    click = rng.random(len(user)) < 1 / (1 + np.exp(-logit))
    rating = np.where(click, 5.0, 2.0).astype(np.float32)
    order = rng.permutation(len(user))
    user, item, rating = user[order], item[order], rating[order]
    time = np.arange(len(user), dtype=np.float64) if has_time else np.arange(len(user), dtype=np.float64)
    schema = FeatureSchema(
        user_features=(Feature("segment", "categorical", vocabulary=("s0", "s1", "s2")),),
        item_features=(Feature("category", "categorical", vocabulary=tuple(f"c{k}" for k in range(n_cats))),),
        name="warmup-synthetic",
    )
    users_t = FeatureTable(schema.user_features, {"segment": torch.as_tensor(rng.integers(0, 3, n_users))},
                           np.array([str(k) for k in range(n_users)]))
    items_t = FeatureTable(schema.item_features, {"category": torch.as_tensor(cat)},
                           np.array([str(k) for k in range(n_items)]))
    return InteractionData(name="warmup-synthetic", schema=schema, users=users_t, items=items_t, user=user, item=item,
                           rating=rating, time=time, order=np.arange(len(user)), has_time=has_time,
                           extras={"category": cat, "item_vectors": v, "item_bias": b})
