"""Save a fitted learner as a model folder and load it back as a :class:`RecommenderModel`.

The learner is rebuilt from its registered name and resolved config, then its saved tensors are
loaded into it: modules and tensor attributes come from ``weights.safetensors``, optimizers are
left fresh (a served model never takes an optimizer step), counters come from ``model.json``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from metarec.config import ConfigError, jsonable
from metarec.schema import FeatureSchema
from metarec.serving.catalogue import Catalogue, UserFeaturePolicy
from metarec.serving.folder import (
    MODEL_FORMAT,
    ModelFolderError,
    join_state,
    load_tensors,
    read_json,
    save_tensors,
    split_state,
    tensor_names,
    verify_folder,
    write_folder,
)
from metarec.serving.model import RecommenderModel


def serving_state(learner: Any) -> dict[str, Any]:
    """The learner's state without its optimizers (what a served model needs)."""
    optimizers = {k for k, v in learner._state_attributes().items() if isinstance(v, torch.optim.Optimizer)}
    return {k: v for k, v in learner.state_dict().items() if k not in optimizers}


def save_model(
    learner: Any,
    path: str | Path,
    *,
    method: str,
    catalogue: Catalogue,
    policies: Sequence[UserFeaturePolicy],
    info: Mapping[str, Any],
    card: Mapping[str, Any],
    card_markdown: str,
) -> Path:
    """Write ``learner`` and everything needed to serve it into the folder ``path``."""
    import metarec

    skeleton, tensors = split_state(serving_state(learner))
    cls = type(learner)
    model_json = {
        "format": MODEL_FORMAT,
        "method": method,
        "learner_class": f"{cls.__module__}:{cls.__qualname__}",
        "config": jsonable(dataclasses.asdict(learner.config)),
        "seed": int(learner.seed),
        "state": skeleton,
        "user_feature_policy": [p.to_dict() for p in policies],
        **jsonable(dict(info)),
        "metarec": metarec.__version__,
        "torch": torch.__version__,
    }
    files = {
        "model.json": json.dumps(model_json, indent=2) + "\n",
        "weights.safetensors": save_tensors(tensors),
        "schema.json": json.dumps(learner.schema.to_dict(), indent=2) + "\n",
        "catalogue.json": json.dumps(catalogue.to_json()) + "\n",
        "catalogue.safetensors": save_tensors(catalogue.tensors()),
        "card.json": json.dumps(jsonable(dict(card)), indent=2) + "\n",
        "card.md": card_markdown,
    }
    return write_folder(path, files, metarec_version=metarec.__version__)


def load_model(
    path: str | Path,
    *,
    method: str | None = None,
    device: str | torch.device = "cpu",
    allow_other_version: bool = False,
) -> RecommenderModel:
    """Load a folder written by ``metarec fit`` (verified against its manifest; no pickle).

    ``method``: refuse a folder holding another method. A folder from another metarec version
    is refused unless ``allow_other_version`` (then it loads with a warning, when the weights
    still fit the learner).
    """
    import metarec
    from metarec.registry import LearnerImportError, UnknownLearnerError, get_learner

    path = Path(path)
    manifest = verify_folder(path)
    meta = read_json(path / "model.json")
    if meta.get("format") != MODEL_FORMAT:
        raise ModelFolderError(f"{path / 'model.json'}: format {meta.get('format')!r}, expected {MODEL_FORMAT!r}")
    saved_version = manifest.get("metarec")
    if saved_version != metarec.__version__:
        msg = (f"{path}: written by metarec {saved_version}, this is metarec {metarec.__version__}; "
               "refit the model with this version")
        if not allow_other_version:
            raise ModelFolderError(msg + " (or load it anyway with allow_other_version=True / --allow-other-version)")
        warnings.warn(msg, stacklevel=2)
    name = meta.get("method")
    if method is not None and name != method:
        raise ModelFolderError(f"{path}: holds a {name!r} model, not {method!r}")
    try:
        cls = get_learner(name)
    except (UnknownLearnerError, LearnerImportError) as exc:
        raise ModelFolderError(f"{path}: method {name!r}: {exc}") from None
    target = f"{cls.__module__}:{cls.__qualname__}"
    if target != meta.get("learner_class"):
        raise ModelFolderError(
            f"{path}: saved from learner class {meta.get('learner_class')}, but {name!r} is now {target}; "
            "a different method is registered under that name"
        )
    schema = FeatureSchema.from_dict(read_json(path / "schema.json"))
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    config = dict(meta.get("config", {}))
    unknown = sorted(set(config) - fields)
    if unknown:
        raise ModelFolderError(f"{path / 'model.json'}: config key(s) {', '.join(unknown)} are not settings of {name!r}")
    try:
        learner = cls.from_settings(schema, overrides=config, device=device, seed=int(meta.get("seed", 0)))
    except (ConfigError, ValueError, TypeError) as exc:
        raise ModelFolderError(f"{path / 'model.json'}: cannot rebuild {name!r}: {exc}") from None
    tensors = load_tensors(path / "weights.safetensors")
    skeleton = meta.get("state")
    wanted = tensor_names(skeleton)
    if wanted != set(tensors):
        raise ModelFolderError(
            f"{path / 'weights.safetensors'}: holds tensors {sorted(set(tensors) - wanted)[:5]} not in model.json "
            f"and lacks {sorted(wanted - set(tensors))[:5]}"
        )
    state = join_state(skeleton, tensors)
    fresh = learner.state_dict()
    for k, v in fresh.items():  # optimizers were not saved: keep the fresh ones
        if k not in state:
            state[k] = v
    try:
        learner.load_state_dict(state)
    except (KeyError, RuntimeError, ValueError) as exc:
        raise ModelFolderError(f"{path}: the weights do not fit method {name!r} with its saved config: {exc}") from None
    cat_meta = read_json(path / "catalogue.json")
    try:
        catalogue = Catalogue.from_parts(schema, cat_meta, load_tensors(path / "catalogue.safetensors"))
    except (KeyError, ValueError) as exc:
        raise ModelFolderError(f"{path / 'catalogue.json'}: inconsistent catalogue: {exc}") from None
    policies = [UserFeaturePolicy.from_dict(p) for p in meta.get("user_feature_policy", [])]
    info = {k: v for k, v in meta.items() if k not in ("state",)}
    try:
        return RecommenderModel(learner, catalogue, policies, info=info, card=read_json(path / "card.json"), path=path)
    except ValueError as exc:
        raise ModelFolderError(f"{path}: {exc}") from None


__all__ = ["load_model", "save_model", "serving_state"]
