"""What a training run is, whichever framework trains it: progress state and result, the
divergence error, the run directory and its checkpoints, the metrics logger, the
eval/checkpoint/early-stop schedule, and the model folder a run ends with."""

from kiln.run.state import (
    TrainingDiverged,
    TrainResult,
    TrainState,
    describe_kept,
    eval_record,
    finished_result,
)

__all__ = ["TrainResult", "TrainState", "TrainingDiverged", "describe_kept", "eval_record",
           "finished_result"]
