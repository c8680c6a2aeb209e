"""Training: one step, the loop, checkpoints, EMA, logs and the parallel wrap."""

from anydit.train.step import fit, forward_backward, micro_inputs, train_step

__all__ = ["fit", "forward_backward", "micro_inputs", "train_step"]
