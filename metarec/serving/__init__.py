"""From benchmark to recommender: fit a method into a model folder, load it, recommend, serve.

* :func:`load_model` -- a folder written by ``metarec fit`` as a :class:`RecommenderModel`;
* :meth:`RecommenderModel.recommend` / :meth:`RecommenderModel.predict` -- adapt to a new user's
  first ratings and rank the catalogue (or predict given items);
* :mod:`metarec.serving.http` -- the FastAPI application behind ``metarec serve``.
"""

from metarec.serving.folder import ModelFolderError
from metarec.serving.model import (
    Prediction,
    RatingRangeError,
    Recommendation,
    RecommendError,
    RecommenderModel,
    UnknownItemError,
)
from metarec.serving.persist import load_model, save_model

__all__ = [
    "ModelFolderError",
    "Prediction",
    "RatingRangeError",
    "Recommendation",
    "RecommendError",
    "RecommenderModel",
    "UnknownItemError",
    "load_model",
    "save_model",
]
