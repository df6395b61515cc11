"""Hyperparameter sweeps on Ray Tune: every trial is a full distributed pretraining run (a TorchTrainer)."""
