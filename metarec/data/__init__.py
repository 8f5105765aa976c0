"""Datasets and the cold-start protocol.

Loaders turn files into an :class:`~metarec.data.base.InteractionData` (feature tables plus a
ratings log); :func:`~metarec.data.protocol.build_split` applies the MAMO paper's protocol and
returns :class:`~metarec.tasks.TaskSet` objects for training and testing users.
:func:`load_split` does both, with checksum verification and a cache::

    from metarec.data import load_split
    split = load_split("ml-1m", data_dir="../shared/data", seed=0)
    split.train, split.test, split.info["query_scenarios_test"]
"""

from metarec.data.base import InteractionData
from metarec.data.load import available_datasets, load_dataset, load_split
from metarec.data.protocol import ProtocolConfig, Split, build_split

__all__ = ["InteractionData", "ProtocolConfig", "Split", "available_datasets", "build_split", "load_dataset", "load_split"]
