"""Datasets and the cold-start protocol.

Loaders turn files into an :class:`~metarec.data.base.InteractionData` (feature tables plus a
ratings log); :func:`~metarec.data.protocol.build_split` applies the MAMO paper's protocol and
returns :class:`~metarec.tasks.TaskSet` objects for training and testing users.
"""

from metarec.data.base import InteractionData
from metarec.data.protocol import ProtocolConfig, Split, build_split

__all__ = ["InteractionData", "ProtocolConfig", "Split", "build_split"]
