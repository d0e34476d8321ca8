"""The Keras classifier is the torch TransformerClassifier's twin: same size, same numerics rules."""

from pathlib import Path

import numpy as np
import pytest
import torch

from kiln.models import TransformerClassifier
from tests.keras.conftest import NEEDS_KERAS

pytest.importorskip("tensorflow", reason=NEEDS_KERAS)
pytestmark = pytest.mark.keras

from kiln.models.keras_model import build_keras_model, gelu, load_keras_model  # noqa: E402
from kiln.runtime.tensorflow import KerasBackend  # noqa: E402

KWARGS = dict(vocab_size=50, num_labels=3, max_length=16, embed_dim=32, num_heads=4,
              num_layers=2, ff_dim=64, dropout=0.0, pooling="mean", pad_id=0)


def test_same_parameter_count_as_the_torch_model() -> None:
    keras_params = build_keras_model(KWARGS).count_params()
    torch_params = sum(p.numel() for p in TransformerClassifier(**KWARGS).parameters())  # type: ignore[arg-type]
    assert keras_params == torch_params


def test_gelu_is_torchs_exact_gelu() -> None:
    x = np.linspace(-6, 6, 101, dtype=np.float32)
    np.testing.assert_allclose(np.asarray(gelu(x)), torch.nn.functional.gelu(torch.from_numpy(x)),
                               atol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_texts_logits(pooling: str) -> None:
    backend = KerasBackend(build_keras_model({**KWARGS, "pooling": pooling}))
    ids = np.array([[2, 10, 11, 12, 3]])
    alone = backend.run(ids, np.ones_like(ids))
    padded = np.concatenate([ids, np.zeros((1, 6), dtype=ids.dtype)], axis=1)
    other = np.array([[2] + [7] * 9 + [3]])
    batch = backend.run(np.concatenate([padded, other]),
                        np.concatenate([(padded != 0).astype(np.int64), np.ones_like(other)]))
    np.testing.assert_allclose(batch[0], alone[0], atol=1e-5)


def test_layers_start_different_and_padding_embedding_is_zero() -> None:
    model = build_keras_model(KWARGS)
    first = model.get_layer("block0_ff1").kernel.numpy()
    second = model.get_layer("block1_ff1").kernel.numpy()
    assert not np.allclose(first, second)
    assert abs(float(first.std()) - 0.02) < 0.005
    assert not model.get_layer("token_embedding").embeddings.numpy()[0].any()


def test_keras_file_reloads_and_predicts_identically(tmp_path: Path) -> None:
    model = build_keras_model({**KWARGS, "dropout": 0.1})
    model.save(tmp_path / "model.keras")
    ids = np.random.default_rng(0).integers(5, 50, size=(4, 9))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    want = KerasBackend(model).run(ids, mask)
    got = KerasBackend(load_keras_model(tmp_path / "model.keras")).run(ids, mask)
    np.testing.assert_array_equal(got, want)
