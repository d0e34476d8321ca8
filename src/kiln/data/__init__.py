"""Reading labeled text files, tokenizers, batching and the built-in default dataset."""

from kiln.data.batching import (
    Batch,
    EncodedDataset,
    EpochBatchSampler,
    PadCollator,
    SortedBatchSampler,
    make_loader,
    shard_batches,
    sorted_batches,
)
from kiln.data.labels import encode_labels, infer_label_names
from kiln.data.prepare import PreparedData, prepare_data
from kiln.data.readers import RawExample, read_examples, split_holdout
from kiln.data.tokenizer import (
    encode_texts,
    load_tokenizer,
    pad_id,
    pretrained_tokenizer,
    save_tokenizer,
    train_tokenizer,
)

__all__ = [
    "Batch",
    "EncodedDataset",
    "EpochBatchSampler",
    "PadCollator",
    "PreparedData",
    "RawExample",
    "SortedBatchSampler",
    "shard_batches",
    "encode_labels",
    "encode_texts",
    "infer_label_names",
    "load_tokenizer",
    "make_loader",
    "pad_id",
    "prepare_data",
    "pretrained_tokenizer",
    "read_examples",
    "save_tokenizer",
    "sorted_batches",
    "split_holdout",
    "train_tokenizer",
]
