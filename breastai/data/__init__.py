"""Data: datalists, image readers, preprocessing presets and dataset preparation."""
