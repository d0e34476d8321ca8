from pathlib import Path

import torch

from kiln.run.checkpoints import latest_checkpoint, list_checkpoints, remove_stale_temporaries
from kiln.train.checkpoint import load_checkpoint, save_checkpoint


def save(run: Path, step: int, keep: int = 2) -> Path:
    model = {"w": torch.full((2, 2), float(step))}
    optim = {"state": {0: {"exp_avg": torch.ones(2)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}
    return save_checkpoint(run, step, model, optim, {"progress": {"step": step}}, keep=keep)


def test_latest_pointer_and_rotation_keep_the_newest(tmp_path: Path) -> None:
    for step in (5, 10, 15):
        save(tmp_path, step)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-000010", "step-000015"]
    assert latest_checkpoint(tmp_path).name == "step-000015"  # type: ignore[union-attr]


def test_a_half_written_checkpoint_is_never_resumed(tmp_path: Path) -> None:
    save(tmp_path, 5)
    # what a crash during the write of step 10 leaves behind: a temporary folder, no rename
    crashed = tmp_path / "checkpoints" / ".tmp-step-000010-abc"
    crashed.mkdir()
    (crashed / "model.safetensors").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(tmp_path).name == "step-000005"  # type: ignore[union-attr]
    remove_stale_temporaries(tmp_path)
    assert not crashed.exists()


def test_a_stale_latest_pointer_falls_back_to_the_newest_folder(tmp_path: Path) -> None:
    save(tmp_path, 5)
    save(tmp_path, 10)
    (tmp_path / "checkpoints" / "latest").write_text("step-000099\n")
    assert latest_checkpoint(tmp_path).name == "step-000010"  # type: ignore[union-attr]


def test_state_loads_back_with_weights_only(tmp_path: Path) -> None:
    path = save(tmp_path, 7)
    model, optim, trainer = load_checkpoint(path, torch.device("cpu"))
    assert torch.equal(model["w"], torch.full((2, 2), 7.0))
    assert optim["param_groups"][0]["lr"] == 0.1
    assert trainer["progress"]["step"] == 7
    # the files are plain tensors/containers: loadable with weights_only=True, no pickled code
    torch.load(path / "optimizer.pt", weights_only=True)
