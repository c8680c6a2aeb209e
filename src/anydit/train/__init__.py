"""Training: steps, loops, checkpoints."""

from anydit.train.step import autocast_for, fit, train_step

__all__ = ["autocast_for", "fit", "train_step"]
