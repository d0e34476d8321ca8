import pytest
import torch

from kiln.errors import ConfigError
from kiln.models import TransformerClassifier, build_model


def model(**kw: object) -> TransformerClassifier:
    torch.manual_seed(0)
    args = dict(vocab_size=50, num_labels=3, max_length=16, embed_dim=32, num_heads=4,
                num_layers=3, ff_dim=64, dropout=0.0)
    args.update(kw)
    return TransformerClassifier(**args).eval()  # type: ignore[arg-type]


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_texts_logits(pooling: str) -> None:
    m = model(pooling=pooling)
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    alone = m(ids, torch.ones_like(ids))
    padded_ids = torch.cat([ids, torch.zeros(1, 6, dtype=torch.long)], dim=1)
    mask = (padded_ids != 0).long()
    other = torch.tensor([[2] + [7] * 9 + [3]])
    batch = m(torch.cat([padded_ids, other]), torch.cat([mask, torch.ones_like(other)]))
    torch.testing.assert_close(batch[0], alone[0], atol=1e-5, rtol=1e-5)


def test_word_order_matters_through_positions() -> None:
    m = model()
    a = torch.tensor([[2, 10, 11, 12, 3]])
    b = torch.tensor([[2, 12, 11, 10, 3]])
    assert not torch.allclose(m(a, torch.ones_like(a)), m(b, torch.ones_like(b)))


def test_each_encoder_layer_is_initialised_independently() -> None:
    layers = model().encoder.layers
    for name in ("linear1.weight", "self_attn.in_proj_weight", "linear2.weight"):
        w0 = layers[0].get_parameter(name)
        assert not torch.equal(w0, layers[1].get_parameter(name))
        assert not torch.equal(w0, layers[2].get_parameter(name))


def test_pad_embedding_is_zero() -> None:
    assert torch.count_nonzero(model().token_embedding.weight[0]) == 0


def test_registry_rejects_unknown_names() -> None:
    with pytest.raises(ConfigError, match="unknown model 'gpt'"):
        build_model("gpt", {})
