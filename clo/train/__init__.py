"""Training: cross-lingual pairs (data), the pure losses (objective), the trainer and its run."""
