"""Learners that ship inside metarec: MAMO, the generic MAML learner and simple baselines."""
