"""Foundations every layer may use: configuration, sample keys, file writing, devices and DDP."""
