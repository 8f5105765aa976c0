"""A tiny metarec plugin: the docs tutorial's Meta-SGD learner."""
