"""tf.data pipelines over the tokenised datasets that ``kiln.data.prepare_data`` builds.

Training: one epoch is the cached examples shuffled with a seed that is a function of
(seed, epoch), padded to the longest text of each batch, and the stream of epochs is prefetched
with AUTOTUNE. Because an epoch's order depends on nothing else, a resumed run rebuilds the stream
from its epoch and skips the batches already trained on: the batches after a resume are the ones
an uninterrupted run would have seen (the torch path's sampler has the same property).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from kiln.data import EncodedDataset, SortedBatchSampler
from kiln.extras import import_keras

tf, _ = import_keras()

EPOCH_SEED_STRIDE = 100_003  # as the torch sampler: epochs of different seeds do not collide


@dataclass(frozen=True)
class TrainStream:
    """How the training stream is cut: ``batches_per_epoch`` batches of ``batch_size``."""

    batch_size: int  # global batch (per-replica batch x replicas)
    batches_per_epoch: int


def plan_stream(dataset: EncodedDataset, global_batch: int) -> TrainStream:
    return TrainStream(global_batch, math.ceil(len(dataset) / global_batch))


def _examples(dataset: EncodedDataset) -> Any:
    """(features, label) per example, unpadded, cached in memory after the first pass."""
    ids = tf.ragged.constant([x.tolist() for x in dataset.ids], dtype=tf.int64, ragged_rank=1)
    labels = tf.constant(dataset.labels, dtype=tf.int64)

    def features(token_ids: Any, label: Any) -> Any:
        return {"input_ids": token_ids, "attention_mask": tf.ones_like(token_ids)}, label

    return tf.data.Dataset.from_tensor_slices((ids, labels)).map(features).cache()


def _padding(pad_id: int) -> Any:
    zero = tf.constant(0, tf.int64)
    return {"input_ids": tf.constant(pad_id, tf.int64), "attention_mask": zero}, zero


def train_dataset(dataset: EncodedDataset, stream: TrainStream, pad_id: int, seed: int,
                  start_epoch: int, end_epoch: int, skip_batches: int = 0) -> Any:
    """Batches of epochs ``start_epoch .. end_epoch - 1``, the first ``skip_batches`` left out.

    Each epoch is shuffled over the whole dataset with seed ``seed * 100003 + epoch``.
    """
    examples = _examples(dataset)
    padding = _padding(pad_id)
    epochs = None
    for epoch in range(start_epoch, end_epoch):
        # a Python int seed per epoch: TensorFlow combines it with the global seed that
        # keras.utils.set_random_seed sets, and both are the same in a resumed process
        shuffled = examples.shuffle(len(dataset), seed=seed * EPOCH_SEED_STRIDE + epoch,
                                    reshuffle_each_iteration=False)
        batches = shuffled.padded_batch(stream.batch_size, padding_values=padding)
        epochs = batches if epochs is None else epochs.concatenate(batches)
    if epochs is None:
        raise ValueError(f"no epochs in [{start_epoch}, {end_epoch})")
    options = tf.data.Options()
    options.deterministic = True  # the same batches in the same order, every run
    return epochs.skip(skip_batches).with_options(options).prefetch(tf.data.AUTOTUNE)


def eval_dataset(dataset: EncodedDataset, batch_size: int, pad_id: int) -> Any:
    """The evaluation set in batches of similar length (least padding), in a fixed order."""
    order = np.concatenate(list(SortedBatchSampler(dataset.lengths, batch_size)))
    ordered = EncodedDataset([dataset.ids[i] for i in order], dataset.labels[order].tolist())
    return _examples(ordered).padded_batch(batch_size, padding_values=_padding(pad_id)).prefetch(
        tf.data.AUTOTUNE)
