"""Metrics: torchmetrics Metric classes (DDP-summable states) with functional twins in ``functional/``."""
