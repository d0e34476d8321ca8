"""Triton Python-backend model: texts in, padded token ids out (kiln's tokenisation).

Copied by `kiln triton` as ``<name>_tokenizer/1/model.py``. ``config.pbtxt`` parameters:
``tokenizer`` (a tokenizers JSON file beside config.pbtxt), ``max_length`` (ids kept per text) and
``pad_id``. Every text of the requests Triton hands over together is encoded in one call and padded
to the longest text of that batch, exactly as kiln's Predictor and `kiln serve` do, so the logits
match theirs. A request with a text that is not UTF-8 or is blank fails alone.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import triton_python_backend_utils as pb_utils
from tokenizers import Tokenizer

TEXT = "text"
IDS, MASK = "input_ids", "attention_mask"


class TritonPythonModel:
    """Triton's Python-backend hooks: ``initialize`` once per instance, ``execute`` per batch."""

    def initialize(self, args: dict[str, str]) -> None:
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config.get("parameters", {}).items()}
        folder = Path(args["model_repository"])  # this model's folder, beside config.pbtxt
        self.tokenizer = Tokenizer.from_file(str(folder / params["tokenizer"]))
        self.max_length = int(params["max_length"])
        self.pad_id = int(params["pad_id"])
        self.dtypes = {o["name"]: pb_utils.triton_string_to_numpy(o["data_type"])
                       for o in config["output"]}

    def execute(self, requests: list[Any]) -> list[Any]:
        texts: list[list[str] | str] = [_texts(r) for r in requests]  # a str is the error
        good = [t for t in texts if isinstance(t, list)]
        encoded = self.tokenizer.encode_batch([text for batch in good for text in batch])
        ids, mask = pad_batch([e.ids[: self.max_length] for e in encoded], self.pad_id)
        responses, start = [], 0
        for request_texts in texts:
            if isinstance(request_texts, str):
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(request_texts)))
                continue
            stop = start + len(request_texts)
            responses.append(pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(IDS, ids[start:stop].astype(self.dtypes[IDS])),
                pb_utils.Tensor(MASK, mask[start:stop].astype(self.dtypes[MASK]))]))
            start = stop
        return responses


def _texts(request: Any) -> list[str] | str:
    """The request's texts, or the reason it cannot be answered."""
    values = pb_utils.get_input_tensor_by_name(request, TEXT).as_numpy().reshape(-1)
    texts = []
    for row, value in enumerate(values):
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as exc:
            return f"input 'text' row {row} is not UTF-8: {exc}"
        if not text.strip():
            return f"input 'text' row {row} is blank; send the text to classify"
        texts.append(text)
    return texts


def pad_batch(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad ``sequences`` to the longest one; (input_ids, attention_mask) as int64.
    The same as kiln.runtime.pad_batch, which this file cannot import (kiln is not in Triton)."""
    longest = max((len(s) for s in sequences), default=1)
    ids = np.full((len(sequences), longest), pad_id, dtype=np.int64)
    mask = np.zeros((len(sequences), longest), dtype=np.int64)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = seq
        mask[row, : len(seq)] = 1
    return ids, mask
