"""A tiny metarec plugin: the docs tutorial's Reptile learner."""
