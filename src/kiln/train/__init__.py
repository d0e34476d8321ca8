"""Training: the loop, checkpoints and exact resume, evaluation and metrics, logging."""

from kiln.train.evaluate import evaluate
from kiln.train.loop import TrainResult, TrainState, train
from kiln.train.metrics import EvalResult, format_confusion

__all__ = ["EvalResult", "TrainResult", "TrainState", "evaluate", "format_confusion", "train"]
