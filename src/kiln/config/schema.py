"""The validated config tree. Every other module takes these typed objects, never raw dicts.

Sentinels are spelled out where they are defined: ``-1`` or ``0`` mean "off" or "automatic" as each
field's description says.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Model presets: the CPU default is small; "reference" is the reference design.
MODEL_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"vocab_size": 2000, "embed_dim": 64, "num_heads": 2, "num_layers": 1, "ff_dim": 128},
    "small": {"vocab_size": 8000, "embed_dim": 128, "num_heads": 4, "num_layers": 2, "ff_dim": 256},
    "reference": {
        "vocab_size": 10000,
        "embed_dim": 512,
        "num_heads": 8,
        "num_layers": 6,
        "ff_dim": 2048,
    },
}


class Section(BaseModel):
    """Base of every config section: unknown keys are errors and objects are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class TokenizerConfig(Section):
    kind: Literal["wordpiece", "bpe"] = Field(
        "wordpiece", description="subword algorithm trained on the training split"
    )
    lowercase: bool = Field(True, description="lowercase and strip accents before tokenizing")
    min_frequency: int = Field(2, ge=1, description="drop merges/pieces seen fewer times")


class DataConfig(Section):
    train: str | None = Field(
        None, description="training file (.csv, .tsv, .jsonl); null = the built-in dataset"
    )
    eval: str | None = Field(
        None, description="evaluation file; null = hold out eval_fraction of the training file"
    )
    eval_fraction: float = Field(
        0.1, gt=0, lt=1, description="share of the training file held out when data.eval is null"
    )
    text_column: str = Field("text", description="column (CSV/TSV header) or key (JSONL) of the text")
    label_column: str = Field("label", description="column or key of the label")
    labels: list[str] | None = Field(
        None,
        description="label names in class-index order; integer labels in the file index this "
        "list. null = sorted labels found in the training file",
    )
    max_length: int = Field(128, ge=4, le=8192, description="tokens per text, longer ones are cut")
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    bucket_by_length: bool = Field(
        False, description="batch texts of similar length together (less padding; torch only)"
    )
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes (0 = main process)")
    pin_memory: bool = Field(False, description="DataLoader pin_memory (useful with CUDA)")
    prefetch_factor: int | None = Field(
        None, ge=1, description="batches prefetched per worker; needs num_workers > 0"
    )
    persistent_workers: bool = Field(
        False, description="keep workers alive between epochs; needs num_workers > 0"
    )

    @model_validator(mode="after")
    def _worker_options_need_workers(self) -> DataConfig:
        if self.num_workers == 0 and (self.prefetch_factor is not None or self.persistent_workers):
            raise ValueError(
                "data.prefetch_factor and data.persistent_workers need data.num_workers > 0"
            )
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            raise ValueError(f"data.labels has duplicates: {self.labels}")
        if self.labels is not None and len(self.labels) < 2:
            raise ValueError("data.labels needs at least 2 labels")
        return self


# Size fields of the from-scratch transformer; a pretrained encoder takes its sizes from its folder.
SIZE_FIELDS = ("vocab_size", "embed_dim", "num_heads", "num_layers", "ff_dim")


class ModelConfig(Section):
    name: Literal["transformer", "hf_encoder"] = Field(
        "transformer",
        description="model in the registry: transformer (trained from scratch with its own "
        "tokenizer) or hf_encoder (a pretrained Hugging Face encoder from model.path, fine-tuned "
        "with a new classification head; needs kiln[hf])",
    )
    path: str | None = Field(
        None,
        description="hf_encoder only: a local Hugging Face model folder (config.json, weights, "
        "tokenizer), loaded offline; 'minilm' = all-MiniLM-L6-v2 as packaged by kiln[hf]",
    )
    preset: Literal["tiny", "small", "reference"] = Field(
        "small",
        description="transformer only: fills the size fields left unset: tiny (tests), small "
        "(CPU default), reference (embed 512, 8 heads, 6 layers, vocabulary 10000)",
    )
    vocab_size: int = Field(
        0, ge=0, description="tokenizer vocabulary to train (0 = from preset)"
    )
    embed_dim: int = Field(0, ge=0, description="width of embeddings and encoder (0 = from preset)")
    num_heads: int = Field(0, ge=0, description="attention heads (0 = from preset)")
    num_layers: int = Field(0, ge=0, description="encoder layers (0 = from preset)")
    ff_dim: int = Field(0, ge=0, description="feed-forward width (0 = from preset)")
    dropout: float = Field(
        0.1, ge=0, lt=1, description="dropout in embeddings and encoder layers (hf_encoder: before "
        "the new head; the encoder keeps the dropout of its config.json)"
    )
    pooling: Literal["mean", "cls"] = Field(
        "mean", description="mean over real tokens, or the first ([CLS]) token"
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_from_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "small")
        if data.get("name") == "hf_encoder" or preset not in MODEL_PRESETS:
            # a pretrained encoder's sizes come from its config.json; an unknown preset is
            # reported by the Literal check
            return data
        filled = dict(data)
        for key, value in MODEL_PRESETS[preset].items():
            if filled.get(key) in (None, 0):
                filled[key] = value
        return filled

    @model_validator(mode="after")
    def _heads_divide_width(self) -> ModelConfig:
        if self.name == "hf_encoder":
            return self._check_pretrained()
        if self.path is not None:
            raise ValueError("model.path is only read by model.name=hf_encoder; remove it or set "
                             "model.name=hf_encoder")
        if self.embed_dim % self.num_heads:
            raise ValueError(
                f"model.embed_dim ({self.embed_dim}) must be divisible by "
                f"model.num_heads ({self.num_heads})"
            )
        if self.vocab_size < 16:
            raise ValueError(f"model.vocab_size must be at least 16, got {self.vocab_size}")
        return self

    def _check_pretrained(self) -> ModelConfig:
        # Whether the folder exists is checked when training reads it (kiln.config.pretrained), so
        # that a finished run's config.yaml still loads where the original folder is absent.
        if not self.path:
            raise ValueError("model.name=hf_encoder needs model.path: a local Hugging Face model "
                             "folder, or model.path=minilm for the packaged all-MiniLM-L6-v2")
        sizes = [f"model.{k}={getattr(self, k)}" for k in SIZE_FIELDS if getattr(self, k)]
        if sizes:
            raise ValueError(f"{', '.join(sizes)} cannot be set with model.name=hf_encoder: a "
                             "pretrained encoder's sizes and vocabulary come from model.path")
        return self


class TrainConfig(Section):
    epochs: int = Field(5, ge=1, description="passes over the training data")
    max_steps: int = Field(
        -1, ge=-1, description="stop after this many optimizer steps (-1 = no limit)"
    )
    batch_size: int = Field(32, ge=1, description="examples per micro-batch (per device)")
    grad_accum_steps: int = Field(
        1, ge=1, description="micro-batches per optimizer step; the update equals one batch "
        "grad_accum_steps times larger"
    )
    lr: float = Field(5e-4, gt=0, description="peak learning rate of AdamW")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on norms/biases)")
    beta1: float = Field(0.9, ge=0, lt=1, description="AdamW beta1")
    beta2: float = Field(0.999, ge=0, lt=1, description="AdamW beta2")
    schedule: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="learning-rate decay after warmup"
    )
    warmup_ratio: float = Field(0.06, ge=0, lt=1, description="share of steps spent warming up")
    warmup_steps: int = Field(
        -1, ge=-1, description="warmup length in steps (-1 = use warmup_ratio)"
    )
    max_grad_norm: float = Field(1.0, ge=0, description="gradient clipping norm (0 = no clipping)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(
        "auto",
        description="autocast dtype (keras: mixed_bfloat16 / mixed_float16 policy); auto = bf16 "
        "on a CPU with bf16 units (AMX/AVX512-BF16) whose bf16 matmul measures >= 1.3x fp32, else "
        "fp32 (keras: fp32 on CPU); bf16 on CUDA when supported else fp16. fp16 uses a "
        "GradScaler (keras: a LossScaleOptimizer) and needs CUDA",
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto = cuda if available")
    eval_every: int = Field(
        0, ge=0, description="evaluate every N optimizer steps (0 = at the end of each epoch)"
    )
    checkpoint_every: int = Field(
        0, ge=0, description="checkpoint every N optimizer steps (0 = at the end of each epoch)"
    )
    keep_checkpoints: int = Field(3, ge=1, description="how many latest checkpoints to keep")
    log_every: int = Field(10, ge=1, description="log metrics every N optimizer steps")
    metric: Literal["accuracy", "macro_f1", "loss"] = Field(
        "accuracy", description="evaluation metric that picks the best model and early stopping"
    )
    early_stopping_patience: int = Field(
        0, ge=0, description="stop after N evaluations without improvement (0 = off)"
    )
    select: Literal["best", "last"] = Field(
        "best", description="which weights go into model/: best by train.metric, or the last"
    )
    num_threads: int = Field(
        0, ge=0, description="CPU threads of torch (keras: TensorFlow intra-op threads); 0 = the "
        "framework's default"
    )
    max_bad_steps: int = Field(
        5, ge=0, description="stop after N consecutive steps with a non-finite loss or gradient "
        "(each is skipped; 0 = never stop). torch only: keras stops at the first non-finite loss"
    )
    strategy: Literal["ddp", "fsdp"] = Field(
        "ddp",
        description="with several processes (kiln train --nproc-per-node N, or torchrun): ddp "
        "replicates the model on every rank; fsdp (FSDP2 fully_shard) shards parameters, "
        "gradients and optimizer state over the ranks, for models that do not fit one device",
    )
    compile: bool = Field(
        False, description="run the model through torch.compile (saved weights stay plain)"
    )
    data_wait_warning: float = Field(
        0.2, ge=0, le=1, description="warn when the loop waits for data more than this share of "
        "its step time (0 = never)"
    )


class ProfilerConfig(Section):
    wait: int = Field(2, ge=0, description="steps skipped before the profiler starts")
    warmup: int = Field(2, ge=0, description="steps profiled but discarded (warm-up)")
    active: int = Field(5, ge=1, description="steps recorded")
    row_limit: int = Field(15, ge=1, description="operators in the printed table")

    @property
    def steps(self) -> int:
        return self.wait + self.warmup + self.active


class KerasConfig(Section):
    """Keys that only the Keras/TensorFlow path reads (framework=keras)."""

    strategy: Literal["auto", "default", "mirrored", "multi_worker"] = Field(
        "auto",
        description="tf.distribute strategy: auto = mirrored over several GPUs, else default "
        "(one device); mirrored = one replica per GPU (or per logical CPU device); multi_worker = "
        "MultiWorkerMirroredStrategy, cluster from TF_CONFIG (refused for more than one worker: "
        "Keras 3.15's fit fails there). train.batch_size is per replica",
    )
    jit_compile: bool = Field(
        False,
        description="XLA-compile the train step. Off: with batches padded to their longest text "
        "every new shape recompiles (measured about 6x slower on CPU)",
    )


# Keys that only the torch loop implements; with framework=keras a non-default value would do
# nothing, so it is an error instead.
TORCH_ONLY_KEYS = {
    "data": ("bucket_by_length", "num_workers", "pin_memory", "prefetch_factor",
             "persistent_workers"),
    "train": ("max_bad_steps", "strategy", "compile", "data_wait_warning"),
}


class Config(Section):
    seed: int = Field(0, ge=0, description="seeds data order, initialisation and dropout")
    run_dir: str = Field("runs/default", description="where the run directory goes")
    framework: Literal["torch", "keras"] = Field(
        "torch",
        description="training engine: torch, or keras (Keras 3 on TensorFlow; needs the "
        "kiln[keras] extra). The run directory, manifest and exports are the same",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    profile: bool = Field(
        False, description="profile the first profiler.* steps with torch.profiler: a trace in "
        "tensorboard/profile/ and a table of the top operators"
    )
    profiler: ProfilerConfig = Field(default_factory=ProfilerConfig)
    keras: KerasConfig = Field(default_factory=KerasConfig)
    versions: dict[str, str] | None = Field(
        None, description="written by kiln into config.yaml: versions that ran it; ignored on input"
    )

    @model_validator(mode="after")
    def _pretrained_tokenizer_is_not_trained(self) -> Config:
        if self.model.name == "hf_encoder" and self.data.tokenizer != TokenizerConfig():
            raise ValueError("data.tokenizer.* cannot be set with model.name=hf_encoder: the "
                             "pretrained encoder's own tokenizer is used, not a trained one")
        return self

    @model_validator(mode="after")
    def _keys_match_the_framework(self) -> Config:
        if self.framework == "torch":
            changed = _changed_keys(self.keras, "keras")
            if changed:
                raise ValueError(f"{', '.join(changed)}: used only with framework=keras; set "
                                 "framework=keras or leave them out")
        else:
            changed = [key for section, names in TORCH_ONLY_KEYS.items()
                       for key in _changed_keys(getattr(self, section), section, names)]
            changed += ["profile"] if self.profile else []
            changed += ["model.name"] if self.model.name != "transformer" else []
            if changed:
                raise ValueError(f"{', '.join(changed)}: used only with framework=torch (the keras "
                                 "path has no DataLoader workers, length buckets, FSDP, "
                                 "torch.compile, profiler or pretrained encoders, and stops at "
                                 "the first non-finite loss); leave them at their defaults")
        return self


def _changed_keys(section: BaseModel, prefix: str, names: tuple[str, ...] | None = None) -> list[str]:
    """Dotted keys of ``section`` whose value differs from the default."""
    fields = type(section).model_fields
    return [f"{prefix}.{name}" for name in names or tuple(fields)
            if getattr(section, name) != fields[name].get_default(call_default_factory=True)]
