"""Hyper-parameter tuning on the tuning pool: search spaces, Optuna studies, their outputs."""
