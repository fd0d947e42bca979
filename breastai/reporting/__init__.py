"""Metrics, figures and TensorBoard logging."""
