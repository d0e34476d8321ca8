"""From config to ready datasets: read files, fix the label order, train or load the tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from kiln.config import Config
from kiln.config.pretrained import max_positions, read_pretrained_config, resolve_pretrained_dir
from kiln.data import builtin
from kiln.data.batching import EncodedDataset
from kiln.data.labels import encode_labels, infer_label_names
from kiln.data.readers import RawExample, read_examples, split_holdout
from kiln.data.tokenizer import (
    encode_texts,
    load_tokenizer,
    pretrained_tokenizer,
    save_tokenizer,
    train_tokenizer,
)
from kiln.errors import ConfigError


@dataclass(frozen=True)
class PreparedData:
    """Everything the training loop needs from the data stage."""

    train: EncodedDataset
    eval: EncodedDataset
    label_names: tuple[str, ...]
    tokenizer: Tokenizer
    train_path: Path
    eval_path: Path | None  # None: held out from train_path
    eval_texts: tuple[str, ...] = ()  # the evaluation texts as read, for benchmarks


def prepare_data(cfg: Config, run_dir: Path) -> PreparedData:
    """Read and encode the train and eval data of ``cfg``.

    The tokenizer is trained on the training split only (or, for ``model.name=hf_encoder``, is the
    pretrained model's own) and saved as ``run_dir/tokenizer.json``; if that file exists (a resumed
    run, an export) it is loaded instead, so a resume never retrains it.
    With no ``data.train`` the built-in dataset is generated into ``run_dir/data/``.

    Raises:
        DataError: any bad file, line or label. ConfigError: a pretrained model.path that cannot
            be used, or a data.max_length longer than its positions.
    """
    train_path, eval_path = _data_paths(cfg, run_dir)
    d = cfg.data
    train_raw = read_examples(train_path, d.text_column, d.label_column)
    if eval_path is None:
        train_raw, eval_raw = split_holdout(train_raw, d.eval_fraction, cfg.seed, train_path)
    else:
        eval_raw = read_examples(eval_path, d.text_column, d.label_column)
    names = infer_label_names(train_raw, d.labels, train_path)
    train_labels = encode_labels(train_raw, names, train_path)
    eval_labels = encode_labels(eval_raw, names, eval_path or train_path)

    tok_path = run_dir / "tokenizer.json"
    if tok_path.exists():
        tok = load_tokenizer(tok_path)
    else:
        tok = _new_tokenizer(cfg, train_raw)
        save_tokenizer(tok, tok_path)
    return PreparedData(
        train=_encode(tok, train_raw, train_labels),
        eval=_encode(tok, eval_raw, eval_labels),
        label_names=names,
        tokenizer=tok,
        train_path=train_path,
        eval_path=eval_path,
        eval_texts=tuple(e.text for e in eval_raw),
    )


def _new_tokenizer(cfg: Config, train_raw: list[RawExample]) -> Tokenizer:
    """A pretrained encoder's own tokenizer, else one trained on the training split."""
    d = cfg.data
    if cfg.model.name != "hf_encoder":
        return train_tokenizer((e.text for e in train_raw), d.tokenizer, cfg.model.vocab_size,
                               d.max_length)
    assert cfg.model.path is not None  # the config validator requires it
    folder = resolve_pretrained_dir(cfg.model.path)
    limit = max_positions(read_pretrained_config(folder))
    if d.max_length > limit:
        raise ConfigError(f"data.max_length={d.max_length} is longer than the {limit} positions "
                          f"of the encoder at model.path {folder}; set data.max_length<={limit}")
    return pretrained_tokenizer(folder, d.max_length)


def _data_paths(cfg: Config, run_dir: Path) -> tuple[Path, Path | None]:
    if cfg.data.train is not None:
        return Path(cfg.data.train), Path(cfg.data.eval) if cfg.data.eval else None
    # The built-in dataset is written into the run so that `kiln eval` and users can see it.
    data_dir = run_dir / "data"
    if not (data_dir / "train.csv").exists():
        ds = builtin.generate()
        builtin.write_csv(ds.train, data_dir / "train.csv")
        builtin.write_csv(ds.eval, data_dir / "eval.csv")
    return data_dir / "train.csv", Path(cfg.data.eval) if cfg.data.eval else data_dir / "eval.csv"


def _encode(tok: Tokenizer, raw: list[RawExample], labels: list[int]) -> EncodedDataset:
    return EncodedDataset(encode_texts(tok, [e.text for e in raw]), labels)
