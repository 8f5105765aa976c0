"""The plugin's own test: metarec's learner contract, on a tiny synthetic dataset."""
from metarec.testing import check_learner


def test_reptile_keeps_the_learner_contract():
    # Small model sizes keep the check to a few seconds; it trains for 2 epochs.
    check_learner("toy-reptile", preset="quick", overrides={"embedding_dim": 4, "hidden": (8,)})
