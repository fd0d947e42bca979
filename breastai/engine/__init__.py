"""Training and scoring: the loops, the trainer, cross-validation, ensembles, evaluation."""
