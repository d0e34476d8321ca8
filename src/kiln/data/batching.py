"""Datasets of token ids, resumable (optionally length-bucketed) batch samplers, padding collation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from kiln.config import DataConfig

Batch = dict[str, torch.Tensor]

# Texts drawn per bucket when length-bucketing: large enough to find similar lengths, small
# enough that batches still mix the data.
BUCKET_POOL_BATCHES = 50


class EncodedDataset(Dataset[tuple[np.ndarray, int]]):
    """Token ids (unpadded) and class indices, indexable like a list."""

    def __init__(self, ids: Sequence[np.ndarray], labels: Sequence[int]) -> None:
        if len(ids) != len(labels):
            raise ValueError(f"{len(ids)} texts but {len(labels)} labels")
        self.ids = list(ids)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.lengths = np.asarray([len(x) for x in self.ids], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        return self.ids[i], int(self.labels[i])


@dataclass(frozen=True)
class PadCollator:
    """Pads a batch to its longest sequence (not to max_length) and builds the attention mask."""

    pad_id: int = 0

    def __call__(self, items: Sequence[tuple[np.ndarray, int]]) -> Batch:
        longest = max(len(ids) for ids, _ in items)
        input_ids = np.full((len(items), longest), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(items), longest), dtype=np.int64)
        for row, (ids, _) in enumerate(items):
            input_ids[row, : len(ids)] = ids
            mask[row, : len(ids)] = 1
        labels = np.asarray([label for _, label in items], dtype=np.int64)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(labels),
        }


class EpochBatchSampler(Sampler[list[int]]):
    """Shuffled batches whose order is a pure function of (seed, epoch).

    Because the order is recomputed from the seed, the sampler's whole state is (epoch, batches
    already taken), which is what makes resuming in the middle of an epoch exact.

    With ``world_size`` > 1 (distributed training) the batches are global batches of
    ``batch_size * world_size`` examples, the same for every rank, and each rank takes its slice of
    each (see ``shard_batches``): the ranks together see exactly what one process with the larger
    batch would.
    """

    def __init__(
        self, lengths: Sequence[int] | np.ndarray, batch_size: int, seed: int,
        bucket_by_length: bool = False, rank: int = 0, world_size: int = 1,
    ) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size * world_size  # the global batch
        self.seed = seed
        self.bucket_by_length = bucket_by_length
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.start = 0  # batches of this epoch to skip (set when resuming)

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def batches(self, epoch: int) -> list[list[int]]:
        """This rank's batches of ``epoch``, in order."""
        return shard_batches(self.global_batches(epoch), self.rank, self.world_size)

    def global_batches(self, epoch: int) -> list[list[int]]:
        """All batches of ``epoch`` in order, before they are split between ranks."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(len(self.lengths), generator=g).tolist()
        if not self.bucket_by_length:
            return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        pool = self.batch_size * BUCKET_POOL_BATCHES
        batches: list[list[int]] = []
        for p in range(0, len(order), pool):
            chunk = sorted(order[p : p + pool], key=lambda i: int(self.lengths[i]))
            batches.extend(chunk[i : i + self.batch_size] for i in range(0, len(chunk), self.batch_size))
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[i] for i in perm]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        full, rest = divmod(len(self.lengths), self.batch_size)
        return full + (rest >= self.world_size if rest else 0)

    def state_dict(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "start": self.start}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.seed, self.epoch, self.start = state["seed"], state["epoch"], state["start"]


class SortedBatchSampler(Sampler[list[int]]):
    """Batches of similar length in a fixed order, for evaluation (least padding, no shuffling).

    With ``world_size`` > 1 each rank gets an interleaved share of the length-sorted examples in
    the same number of batches (collectives inside the model, as with FSDP, need the ranks in
    step); the ranks together cover every example once.
    """

    def __init__(
        self, lengths: Sequence[int] | np.ndarray, batch_size: int, rank: int = 0,
        world_size: int = 1,
    ) -> None:
        order = np.argsort(np.asarray(lengths), kind="stable")
        if world_size == 1:
            self._batches = [order[i : i + batch_size].tolist()
                             for i in range(0, len(order), batch_size)]
            return
        if len(order) < world_size:
            raise ValueError(f"{len(order)} examples cannot be split over {world_size} processes")
        per_rank = -(-len(order) // world_size)
        num_batches = -(-per_rank // batch_size)
        mine = order[rank::world_size]
        self._batches = [b.tolist() for b in np.array_split(mine, num_batches) if len(b)]
        if len(self._batches) != num_batches:
            raise ValueError(f"{len(order)} examples cannot be split over {world_size} processes "
                             f"in batches of {batch_size}")

    def __iter__(self) -> Iterator[list[int]]:
        return iter(self._batches)

    def __len__(self) -> int:
        return len(self._batches)


def shard_batches(global_batches: list[list[int]], rank: int, world_size: int) -> list[list[int]]:
    """Rank ``rank``'s part of each global batch: near-equal slices, so every rank gets the same
    number of batches and the ranks together cover each global batch exactly once.

    A global batch with fewer examples than ranks (only an epoch's last one can be) is dropped,
    because every rank must take part in every step.
    """
    if world_size == 1:
        return global_batches
    return [np.array_split(np.asarray(b), world_size)[rank].tolist()
            for b in global_batches if len(b) >= world_size]


def sorted_batches(dataset: EncodedDataset, pad_id: int, batch_size: int) -> Iterator[Batch]:
    """Padded batches of similar length covering ``dataset`` once, without a DataLoader."""
    collate = PadCollator(pad_id)
    for idx in SortedBatchSampler(dataset.lengths, batch_size):
        yield collate([dataset[i] for i in idx])


def make_loader(
    dataset: EncodedDataset, batch_sampler: Sampler[list[int]], cfg: DataConfig, pad_id: int,
    seed: int,
) -> DataLoader[Any]:
    """A DataLoader with the config's worker settings.

    The loader gets its own generator: otherwise creating each epoch's iterator draws from the
    global torch RNG, which would shift dropout masks after a resume.
    """
    extra: dict[str, Any] = {}
    if cfg.num_workers > 0:
        extra["persistent_workers"] = cfg.persistent_workers
        if cfg.prefetch_factor is not None:
            extra["prefetch_factor"] = cfg.prefetch_factor
    return DataLoader(
        dataset,
        batch_sampler=batch_sampler,
        collate_fn=PadCollator(pad_id),
        num_workers=cfg.num_workers,
        pin_memory=cfg.pin_memory,
        generator=torch.Generator().manual_seed(seed),
        **extra,
    )
