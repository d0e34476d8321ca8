"""The Keras twin of :class:`kiln.models.TransformerClassifier`, built from the same kwargs.

Token embedding + learned positions, pre-LayerNorm encoder blocks whose attention ignores padding,
final LayerNorm, mean pooling over real tokens (or the first token), a dense head named ``logits``.
Initialisation follows the torch model (normal(0.02) weights, zero biases, zero padding embedding)
and so do the details that change numbers: exact GELU, LayerNorm epsilon 1e-5, dropout on the
embeddings, on the attention weights, after attention, inside and after the feed-forward block.

The model is functional with two named int64 inputs, ``input_ids`` and ``attention_mask``
[batch, sequence], so that SavedModel and ONNX exports carry the names the rest of kiln expects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from kiln.extras import import_keras

import_keras()  # sets the TensorFlow backend before keras is first imported

import keras  # noqa: E402
from keras import layers, ops  # noqa: E402

INIT_STD = 0.02
LAYER_NORM_EPSILON = 1e-5  # torch's default; Keras' own default (1e-3) would change the numbers
INPUT_NAMES = ("input_ids", "attention_mask")


@keras.saving.register_keras_serializable(package="kiln")
def gelu(x: Any) -> Any:
    """Exact GELU, ``0.5 x (1 + erf(x / sqrt 2))``, as torch computes it.

    TensorFlow's own exact GELU is written with ``erfc``, which has no ONNX operator (tf2onnx
    fails on it); ``erf`` has one, and ONNX Runtime fuses this form into its Gelu kernel.
    """
    return 0.5 * x * (1.0 + ops.erf(x * ops.cast(0.7071067811865476, x.dtype)))


@keras.saving.register_keras_serializable(package="kiln")
class PositionEmbedding(layers.Layer):
    """Adds a learned embedding of each position 0..sequence-1 to its input [batch, seq, dim]."""

    def __init__(self, max_length: int, embed_dim: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length
        self.embed_dim = embed_dim

    def build(self, input_shape: Any) -> None:
        self.embeddings = self.add_weight(
            shape=(self.max_length, self.embed_dim), name="embeddings",
            initializer=keras.initializers.RandomNormal(stddev=INIT_STD))

    def call(self, x: Any) -> Any:
        positions = ops.cast(self.embeddings[: ops.shape(x)[1]], x.dtype)
        return x + positions[None, :, :]

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "max_length": self.max_length, "embed_dim": self.embed_dim}


@keras.saving.register_keras_serializable(package="kiln")
class KeyPaddingMask(layers.Layer):
    """attention_mask [batch, seq] (1 = token, 0 = padding) -> boolean [batch, 1, seq]: every
    query may attend to the real tokens only."""

    def call(self, mask: Any) -> Any:
        return ops.expand_dims(ops.not_equal(mask, 0), axis=1)


@keras.saving.register_keras_serializable(package="kiln")
class MaskedMeanPooling(layers.Layer):
    """Mean over the real tokens of [batch, seq, dim]; padding contributes nothing."""

    def call(self, inputs: Any) -> Any:
        x, mask = inputs
        weights = ops.cast(mask, x.dtype)[:, :, None]
        count = ops.maximum(ops.sum(weights, axis=1), ops.cast(1.0, x.dtype))
        return ops.sum(x * weights, axis=1) / count


@keras.saving.register_keras_serializable(package="kiln")
class FirstToken(layers.Layer):
    """The first ([CLS]) position of [batch, seq, dim]."""

    def call(self, x: Any) -> Any:
        return x[:, 0, :]


def build_keras_model(kwargs: Mapping[str, Any], dtype: str = "float32") -> keras.Model:
    """The classifier for the manifest kwargs of ``transformer`` (see ``kiln.models.model_kwargs``).

    Args:
        kwargs: vocab_size, num_labels, max_length, embed_dim, num_heads, num_layers, ff_dim,
            dropout, pooling, pad_id.
        dtype: a Keras dtype policy: ``float32``, ``mixed_float16`` or ``mixed_bfloat16``. The head
            always computes in float32 so that logits and the loss stay exact.
    """
    if kwargs["pooling"] not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {kwargs['pooling']!r}")
    d, heads, p = int(kwargs["embed_dim"]), int(kwargs["num_heads"]), float(kwargs["dropout"])

    def init() -> Any:
        # a new initializer per layer: Keras draws the same values from one unseeded instance
        # every time it is used, which would start every layer with the same weights
        return keras.initializers.RandomNormal(stddev=INIT_STD)

    def dense() -> dict[str, Any]:
        return {"kernel_initializer": init(), "dtype": dtype}

    ids = keras.Input(shape=(None,), dtype="int64", name="input_ids")
    mask = keras.Input(shape=(None,), dtype="int64", name="attention_mask")
    x = layers.Embedding(kwargs["vocab_size"], d, embeddings_initializer=init(), dtype=dtype,
                         name="token_embedding")(ids)
    x = PositionEmbedding(kwargs["max_length"], d, dtype=dtype, name="position_embedding")(x)
    x = layers.Dropout(p, dtype=dtype, name="embed_dropout")(x)
    key_mask = KeyPaddingMask(name="key_padding_mask")(mask)
    for i in range(int(kwargs["num_layers"])):
        h = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=f"block{i}_norm1")(x)
        h = layers.MultiHeadAttention(heads, d // heads, dropout=p, name=f"block{i}_attention",
                                      **dense())(h, h, attention_mask=key_mask)
        h = layers.Dropout(p, dtype=dtype, name=f"block{i}_dropout1")(h)
        x = layers.Add(dtype=dtype, name=f"block{i}_residual1")([x, h])
        h = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name=f"block{i}_norm2")(x)
        h = layers.Dense(kwargs["ff_dim"], activation=gelu, name=f"block{i}_ff1", **dense())(h)
        h = layers.Dropout(p, dtype=dtype, name=f"block{i}_ff_dropout")(h)
        h = layers.Dense(d, name=f"block{i}_ff2", **dense())(h)
        h = layers.Dropout(p, dtype=dtype, name=f"block{i}_dropout2")(h)
        x = layers.Add(dtype=dtype, name=f"block{i}_residual2")([x, h])
    x = layers.LayerNormalization(epsilon=LAYER_NORM_EPSILON, dtype=dtype, name="final_norm")(x)
    if kwargs["pooling"] == "cls":
        pooled = FirstToken(dtype=dtype, name="pool")(x)
    else:
        pooled = MaskedMeanPooling(dtype=dtype, name="pool")([x, mask])
    logits = layers.Dense(kwargs["num_labels"], kernel_initializer=init(), dtype="float32",
                          name="logits")(pooled)
    model = keras.Model({"input_ids": ids, "attention_mask": mask}, logits,
                        name="transformer_classifier", dtype=dtype)
    # like torch's padding_idx: the padding token starts as a zero vector
    table = model.get_layer("token_embedding").embeddings
    table.assign(ops.scatter_update(table, [[int(kwargs["pad_id"])]], ops.zeros((1, d))))
    return model


def inference_copy(model: keras.Model, kwargs: Mapping[str, Any]) -> keras.Model:
    """A float32 copy of ``model`` (whatever its mixed-precision policy) with the same weights."""
    copy = build_keras_model(kwargs, "float32")
    copy.set_weights(model.get_weights())
    return copy


def load_keras_model(path: str | os.PathLike[str]) -> keras.Model:
    """Load a ``.keras`` file written by kiln (its custom layers are registered above)."""
    return keras.saving.load_model(str(path), compile=False, safe_mode=True)


def serving_function(model: keras.Model) -> Any:
    """A tf.function ``(input_ids, attention_mask) -> logits`` over int64 [batch, sequence] inputs
    of any size, traced once (inference mode: no dropout)."""
    import tensorflow as tf

    spec = [tf.TensorSpec([None, None], tf.int64, name=name) for name in INPUT_NAMES]

    def logits(input_ids: Any, attention_mask: Any) -> Any:
        return model({"input_ids": input_ids, "attention_mask": attention_mask}, training=False)

    return tf.function(logits, input_signature=spec, autograph=False)
