"""Inference on new images: inputs, the staged predictor, ensembles of members, output writers."""
