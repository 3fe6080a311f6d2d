"""Training: cross-lingual pairs (data), the pure losses (objective), batches, log-probs, the trainer and its run.

    from clo.train.run import train
    paths = train(Recipe.load("recipes/demo.yaml"))

TrainingStopped lives here, without torch, so the CLI can tell a stopped run from an error cheaply.
"""


class TrainingStopped(Exception):
    """Raised after SIGINT/SIGTERM stopped a run; nothing was written to adapters/."""
