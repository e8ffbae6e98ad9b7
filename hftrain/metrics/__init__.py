"""Metrics that torchmetrics lacks; everything else comes from torchmetrics directly."""
