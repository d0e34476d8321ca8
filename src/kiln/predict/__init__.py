"""`kiln predict`: batch scoring of CSV, TSV, JSONL and Parquet files with a run's artifact,
streamed in chunks, restartable, on one machine."""

from kiln.predict.job import (
    JobMismatch,
    PredictOptions,
    PredictSummary,
    default_output,
    parts_folder,
    predict_file,
    score_texts,
)

__all__ = ["JobMismatch", "PredictOptions", "PredictSummary", "default_output", "parts_folder",
           "predict_file", "score_texts"]
