"""Optional inner-loop backends that run metarec learners through third-party meta-learning libraries.

Each backend module imports its library lazily, only when a learner selects it, so that
``import metarec`` never pays for (or requires) an optional dependency.
"""
