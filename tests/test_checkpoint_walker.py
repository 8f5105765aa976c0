"""One walker for every safe state format: ``.npz`` checkpoints and model folders (safetensors)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from metarec.checkpoint import NOT_A_LEAF, flatten_state, join_leaves, split_leaves, unflatten_state
from metarec.serving.folder import join_state, split_state, tensor_names

STATE = {"model": {"head.0.weight": torch.arange(6.0).reshape(2, 3), "step": np.int64(7)},
         "history": [torch.tensor([1, 2]), {"loss": np.float32(0.5)}, None, "text", True],
         "flags": (1, 2.5)}


def test_checkpoint_skeleton_keeps_its_format_and_round_trips():
    skeleton, arrays = flatten_state({**STATE, "opt": {0: {"exp_avg": torch.ones(2)}}, "np": np.eye(2)})
    # the on-disk format of earlier checkpoints: numbered arrays with their dtype, integer keys kept
    assert skeleton["__dict__"][0][1]["__dict__"][0][1] == {"__tensor__": "a0", "dtype": "float32"}
    assert sorted(arrays) == ["a0", "a1", "a2", "a3"]
    back = unflatten_state(skeleton, arrays)
    assert torch.equal(back["model"]["head.0.weight"], STATE["model"]["head.0.weight"])
    assert back["model"]["step"] == 7 and isinstance(back["model"]["step"], int)
    assert back["history"][1] == {"loss": 0.5} and back["history"][2:] == [None, "text", True]
    assert torch.equal(back["opt"][0]["exp_avg"], torch.ones(2)) and np.array_equal(back["np"], np.eye(2))
    assert back["history"][0].dtype == torch.int64 and back["flags"] == [1, 2.5]


def test_model_folder_state_names_tensors_by_path_and_round_trips():
    skeleton, tensors = split_state(STATE)
    assert sorted(tensors) == ["history[0]", "model.head.0.weight"]
    assert tensor_names(skeleton) == set(tensors)
    back = join_state(skeleton, tensors)
    assert torch.equal(back["history"][0], STATE["history"][0]) and back["model"]["step"] == 7
    with pytest.raises(TypeError, match="state key 0 at opt is not a string"):
        split_state({"opt": {0: torch.ones(1)}})  # safetensors names are strings


def test_one_walker_serves_both_with_a_leaf_converter():
    seen = []

    def leaf(node, path):
        if isinstance(node, torch.Tensor):
            seen.append(path)
            return {"leaf": path}
        return NOT_A_LEAF

    skeleton = split_leaves(STATE, leaf)
    assert seen == ["model.head.0.weight", "history[0]"]
    back = join_leaves(skeleton, lambda e: e["leaf"] if "leaf" in e else NOT_A_LEAF)
    assert back["model"]["head.0.weight"] == "model.head.0.weight"
    for split in (flatten_state, split_state):
        with pytest.raises(TypeError, match=r"cannot store object at model\.bad"):
            split({"model": {"bad": object()}})
