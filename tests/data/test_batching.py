import numpy as np
import torch

from kiln.data import EncodedDataset, EpochBatchSampler, PadCollator, SortedBatchSampler


def test_batches_pad_to_their_longest_text_with_a_mask() -> None:
    ds = EncodedDataset([np.array([2, 5, 3]), np.array([2, 7, 8, 9, 3])], [0, 1])
    batch = PadCollator(pad_id=0)([ds[0], ds[1]])
    assert batch["input_ids"].tolist() == [[2, 5, 3, 0, 0], [2, 7, 8, 9, 3]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert batch["labels"].tolist() == [0, 1]
    assert batch["input_ids"].dtype == torch.int64


def test_epoch_order_is_a_function_of_seed_and_epoch() -> None:
    lengths = list(range(1, 101))
    a, b = EpochBatchSampler(lengths, 8, seed=3), EpochBatchSampler(lengths, 8, seed=3)
    assert a.batches(0) == b.batches(0)
    assert a.batches(0) != a.batches(1)
    assert sorted(i for batch in a.batches(1) for i in batch) == list(range(100))
    assert len(a) == 13


def test_resume_position_skips_taken_batches() -> None:
    s = EpochBatchSampler(list(range(50)), 4, seed=0)
    full = s.batches(2)
    s.set_epoch(2, start=5)
    assert list(s) == full[5:]
    restored = EpochBatchSampler(list(range(50)), 4, seed=99)
    restored.load_state_dict(s.state_dict())
    assert list(restored) == full[5:]


def test_length_bucketing_cuts_padding_and_keeps_every_example() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 120, size=2000).tolist()

    def padding(batches: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in batches)

    plain = EpochBatchSampler(lengths, 16, seed=1).batches(0)
    bucketed = EpochBatchSampler(lengths, 16, seed=1, bucket_by_length=True).batches(0)
    assert sorted(i for b in bucketed for i in b) == list(range(2000))
    assert padding(bucketed) < padding(plain) / 5


def test_eval_batches_cover_everything_in_length_order() -> None:
    batches = list(SortedBatchSampler([5, 1, 3, 2], 3))
    assert batches == [[1, 3, 2], [0]]
