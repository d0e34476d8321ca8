"""Python-backend models for the Triton repository that `kiln triton` writes.

Each module here is copied as ``<model>/1/model.py`` and runs inside Triton's Python backend, not
inside kiln: it imports only ``triton_python_backend_utils`` (Triton's), numpy, and ``tokenizers``
or ``onnxruntime``, and reads its settings from the ``parameters`` of its own ``config.pbtxt``.

- ``tokenizer``: texts -> ``input_ids`` and ``attention_mask``, as kiln's Predictor tokenises.
- ``onnx_model``: the classifier's ONNX file through ``onnxruntime`` (``--model-backend python``).
- ``postprocess``: logits -> softmax probabilities and the label name.
"""

SOURCES = ("tokenizer", "onnx_model", "postprocess")
