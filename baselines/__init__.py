"""The MAMO paper's baselines (MeLU, MetaCS-DNN, s2Meta, item- and feature-level RUM).

This package is deliberately *outside* :mod:`metarec`: it registers its learners through the
``metarec.learners`` entry-point group, exactly as a third-party package would, and builds them
from metarec's public pieces (feature embedders, MLPs, the functional engine).
"""
