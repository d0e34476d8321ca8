"""Subword tokenizers: trained on the training split with the `tokenizers` library, or the one a
pretrained encoder ships with."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from tokenizers import (
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

from kiln.config import TokenizerConfig, write_text_atomic
from kiln.errors import ConfigError, RunDirError

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = [PAD, UNK, CLS, SEP, MASK]  # PAD first: pad id 0
TOKENIZER_FILE = "tokenizer.json"


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig, vocab_size: int, max_length: int
) -> Tokenizer:
    """Train a WordPiece or byte-level BPE tokenizer that wraps texts as ``[CLS] ... [SEP]``.

    Truncation to ``max_length`` is part of the tokenizer, so it travels in tokenizer.json.
    """
    texts = list(texts)
    continuing: list[str] = []
    if cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(
            clean_text=True, lowercase=cfg.lowercase, strip_accents=cfg.lowercase or None
        )
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        continuing = _continuing_pieces(tok, texts)
        trainer: trainers.Trainer = trainers.WordPieceTrainer(
            vocab_size=vocab_size, min_frequency=cfg.min_frequency,
            special_tokens=SPECIAL_TOKENS + continuing, show_progress=False,
        )
    else:
        tok = Tokenizer(models.BPE(unk_token=UNK))
        norms: list[normalizers.Normalizer] = [normalizers.NFKC()]
        if cfg.lowercase:
            norms.append(normalizers.Lowercase())
        tok.normalizer = normalizers.Sequence(norms)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=cfg.min_frequency, special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
        )
    tok.train_from_iterator(texts, trainer=trainer)
    if continuing:
        tok = _demote_to_vocabulary(tok, set(continuing))
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        special_tokens=[(CLS, tok.token_to_id(CLS)), (SEP, tok.token_to_id(SEP))],
    )
    tok.enable_truncation(max_length)
    return tok


def _continuing_pieces(tok: Tokenizer, texts: list[str]) -> list[str]:
    """Every ``##c`` piece, sorted, to be given fixed ids before training.

    The WordPiece trainer assigns ids to ``##`` pieces in hash-map order, which differs between
    processes and breaks ties between merges differently, so the same data gave different
    vocabularies (huggingface/tokenizers#1794). Pieces that already have ids are not re-assigned.
    """
    assert tok.normalizer is not None and tok.pre_tokenizer is not None
    chars: set[str] = set()
    for text in texts:
        for word, _ in tok.pre_tokenizer.pre_tokenize_str(tok.normalizer.normalize_str(text)):
            chars.update(word[1:])
    return [f"##{c}" for c in sorted(chars)]


def _demote_to_vocabulary(tok: Tokenizer, pieces: set[str]) -> Tokenizer:
    # The pieces went in as special tokens only to fix their ids; as special tokens they would be
    # matched verbatim in input text, so keep them as ordinary vocabulary entries instead.
    data = json.loads(tok.to_str())
    data["added_tokens"] = [t for t in data["added_tokens"] if t["content"] not in pieces]
    return Tokenizer.from_str(json.dumps(data))


def pretrained_tokenizer(folder: Path, max_length: int) -> Tokenizer:
    """The tokenizer a pretrained model folder ships with, truncating to ``max_length``.

    Its tokenizer.json is read as is; a folder with only the files of a slow tokenizer (vocab.txt,
    ...) is converted by transformers' AutoTokenizer, offline. Padding that the file may configure
    is switched off: kiln pads batches itself.

    Raises:
        ConfigError: the folder has no tokenizer that can be loaded.
    """
    path = folder / TOKENIZER_FILE
    if path.is_file():
        tok = Tokenizer.from_file(str(path))
    else:
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise ConfigError(f"model.path {folder} has no {TOKENIZER_FILE}; converting its "
                              "tokenizer needs transformers: pip install 'kiln[hf]'") from None
        try:
            fast = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"model.path {folder}: no tokenizer could be loaded: {exc}") from None
        if not getattr(fast, "is_fast", False):
            raise ConfigError(f"model.path {folder}: its tokenizer has no fast (tokenizers) form; "
                              f"save one as {TOKENIZER_FILE}")
        tok = fast.backend_tokenizer
    tok.no_padding()
    tok.enable_truncation(max_length)
    return tok


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike[str]) -> None:
    """Write tokenizer.json atomically."""
    write_text_atomic(Path(path), tok.to_str(pretty=True))


def load_tokenizer(path: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer.json, raising RunDirError that names the file if it is missing or bad."""
    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception for missing/invalid files
        raise RunDirError(f"cannot load tokenizer {path}: {exc}") from None


def encode_texts(tok: Tokenizer, texts: Sequence[str]) -> list[np.ndarray]:
    """Token ids per text (with [CLS]/[SEP], truncated), unpadded, as int64 arrays."""
    return [np.asarray(enc.ids, dtype=np.int64) for enc in tok.encode_batch(list(texts))]


def pad_id(tok: Tokenizer) -> int:
    """The id used for padding: 0 for kiln-trained and BERT tokenizers, ``<pad>``'s for
    RoBERTa-style ones."""
    for token in (PAD, "<pad>"):
        pid = tok.token_to_id(token)
        if pid is not None:
            return pid
    return 0
