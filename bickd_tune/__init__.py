"""BicKD Tune: searches, ablations and tracking of `bickd` runs on Ray Tune, Optuna and MLflow.

The only package that knows Ray, Optuna and MLflow. Importable from anywhere once installed (a notebook, a
Ray worker on any node); `python -m platform.tune` and `python -m platform.report` are thin entry points to
`bickd_tune.tune` and `bickd_tune.report`.
"""
