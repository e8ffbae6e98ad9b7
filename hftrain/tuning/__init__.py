"""Hyperparameter search (`hftrain tune`, `hftrain.tune`) with Optuna: see `search`."""
