"""Yelp in the heterogeneous-information-network (HIN) release MetaHIN (KDD 2020) used.

Files (``yelp/``; tab-separated, no header, LF, integer ids from 1, no id-to-name maps):

* ``user_business.dat`` -- ``user, business, rating`` (1-5); **no time column**;
* ``business_category.dat`` / ``business_city.dat`` -- ``business, category|city, 1``;
* ``user_compliment.dat`` -- ``user, compliment type, 1`` (presence only);
* ``user_user.dat`` -- ``user, user, 1``: friendships (symmetric).

Everything is read through the custom-data machinery (:mod:`metarec.data.custom`) as a schema
of relational feature files, exactly as a user's own schema file would read it:

* item features: ``category`` (multi-valued, 1-10 per business; ``none`` for the 104 businesses
  without one) and ``city`` (categorical; ``none`` for the 17 without one);
* user features: ``compliment`` (multi-valued over the 11 types; ``none`` for the 11 % of users
  without any) and ``friends``: the number of the user's own friends (``user_user.dat`` rows of
  that user only -- never anything about other users or their ratings), bucketed as
  ``<1, [1,2), [2,5), [5,10), [10,20), [20,50), >=50``.

Protocol defaults (the data has no time): each user's ratings in a seeded random order
(``rating_order = "random"``, ``order_seed``), and a seeded random warm/cold user split
(``user_state_rule = "random"``: ``user_warm_fraction`` = 90 % of the kept users warm, 10 %
cold, as on Book-Crossing); items warm iff more than 10 ratings in the trimmed table, as on
MovieLens. All of it is recorded in the split info and ``results.json``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from metarec.data.base import InteractionData
from metarec.data.custom import DatasetSpec, FeatureSpec, FileSpec, RatingsSpec, TableSpec, assemble, read_spec_tables

RATINGS_FILE = "user_business.dat"
CATEGORY_FILE = "business_category.dat"
CITY_FILE = "business_city.dat"
COMPLIMENT_FILE = "user_compliment.dat"
FRIENDS_FILE = "user_user.dat"
FRIEND_BINS = (1, 2, 5, 10, 20, 50)


@dataclass(frozen=True)
class YelpOptions:
    """Loader choices (the defaults are the documented feature set)."""

    #: Add the bucketed friend count as a user feature.
    friends: bool = True
    #: Add the compliment types as a user feature.
    compliments: bool = True


def _relation(path: str, value: str) -> FileSpec:
    return FileSpec(path=path, id="id", column=value, format="dat", delimiter="\t", header=False, names=("id", value, "weight"))


def yelp_spec(directory: str | Path, options: YelpOptions | None = None) -> DatasetSpec:
    """The Yelp release as a :class:`~metarec.data.custom.DatasetSpec` (the same keys a schema file has)."""
    opts = options or YelpOptions()
    user_features = []
    if opts.compliments:
        user_features.append(FeatureSpec("compliment", "multi_categorical", file=_relation(COMPLIMENT_FILE, "compliment"),
                                         on_missing="category", missing_category="none"))
    if opts.friends:
        user_features.append(FeatureSpec("friends", "categorical", file=_relation(FRIENDS_FILE, "friend"), derive="count",
                                         bins=FRIEND_BINS))
    item_features = [
        FeatureSpec("category", "multi_categorical", file=_relation(CATEGORY_FILE, "category"),
                    on_missing="category", missing_category="none"),
        FeatureSpec("city", "categorical", file=_relation(CITY_FILE, "city"), on_missing="category", missing_category="none"),
    ]
    return DatasetSpec(
        name="yelp",
        ratings=RatingsSpec(user="user", item="business", rating="rating", time=None, path=RATINGS_FILE, format="dat",
                            delimiter="\t", header=False, names=("user", "business", "rating")),
        users=TableSpec(id="user", features=tuple(user_features), path=None, prune_unrated=False),
        items=TableSpec(id="business", features=tuple(item_features), path=None, prune_unrated=False),
        rating_min=1.0,
        rating_max=5.0,
        protocol={"user_state_rule": "random", "rating_order": "random", "item_cold_max_ratings": 10},
        base_dir=str(directory),
    )


def load_yelp(directory: str | Path, options: YelpOptions | None = None) -> InteractionData:
    """Parse the Yelp HIN files in ``directory`` (checksums are the catalog's job)."""
    spec = yelp_spec(directory, options)
    ratings, users, items = read_spec_tables(spec)
    notes = ["no time column: ratings in a seeded random order per user, warm/cold users drawn at random (order_seed)"]
    return assemble(spec, ratings, users, items, notes=notes)


__all__ = ["FRIEND_BINS", "YelpOptions", "load_yelp", "yelp_spec"]
