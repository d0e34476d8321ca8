from pathlib import Path

import pytest

from kiln.config import TokenizerConfig
from kiln.data import (
    builtin,
    encode_texts,
    load_tokenizer,
    pad_id,
    save_tokenizer,
    train_tokenizer,
)


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_trained_tokenizer_wraps_truncates_and_round_trips(kind: str, tmp_path: Path) -> None:
    texts = [t for t, _ in builtin.generate(seed=1, n_train=300, n_eval=10).train]
    tok = train_tokenizer(texts, TokenizerConfig(kind=kind), vocab_size=400, max_length=12)
    assert 100 < tok.get_vocab_size() <= 400
    assert pad_id(tok) == 0
    ids = encode_texts(tok, ["my package has not arrived " * 10, "hi"])
    assert len(ids[0]) == 12  # truncated to max_length, special tokens included
    assert ids[1][0] == tok.token_to_id("[CLS]") and ids[1][-1] == tok.token_to_id("[SEP]")
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert [a.tolist() for a in encode_texts(again, ["hi there"])] == [
        a.tolist() for a in encode_texts(tok, ["hi there"])]


@pytest.mark.parametrize("kind", ["wordpiece", "bpe"])
def test_same_data_gives_the_same_tokenizer_in_every_process(kind: str) -> None:
    # huggingface/tokenizers#1794: WordPiece training depended on hash-map order per process.
    import subprocess
    import sys

    code = (
        "from kiln.config import TokenizerConfig; from kiln.data import train_tokenizer, builtin;"
        "t=[x for x,_ in builtin.generate(seed=3, n_train=300, n_eval=5).train];"
        f"print(train_tokenizer(t, TokenizerConfig(kind='{kind}'), 400, 32).to_str())"
    )
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True).stdout for _ in range(3)}
    assert len(outs) == 1
