"""Resume looks at the checkpoint Ray Train will restore — the one its snapshot registered — never at the newest
folder, which may be a half-finished upload of a run killed mid-checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from dia_ray.distributed.checkpointing import SNAPSHOT, registered_checkpoint, validate_resume
from dia_ray.errors import CheckpointError
from dia_ray.storage import Storage


def _checkpoint(root, run: str, name: str, *, state: bool = True, progress: bool = True) -> None:
    folder = root / run / name
    folder.mkdir(parents=True)
    if state:
        torch.save({"epoch": 1, "w": torch.ones(3)}, folder / "state.pt")
    if progress:
        (folder / "progress.json").write_text(json.dumps({"starts": [0], "epoch": 1}))


def _snapshot(root, run: str, latest: str | None) -> None:
    snap = {"ray_version": "2.60.0", "checkpoint_results": [], "checkpoint_report_indices": [],
            "latest_checkpoint_result": {"checkpoint_dir_name": latest, "metrics": {}} if latest else None,
            "pending_training_results": [], "pending_validation_specs": [], "current_report_index": 1,
            "validated_checkpoint_dir_names": [], "timed_out_validation_checkpoint_dir_names": [],
            "failed_validation_checkpoint_dir_names": []}
    (root / run / SNAPSHOT).write_text(json.dumps(snap))


def test_a_half_uploaded_newer_folder_is_ignored(tmp_path):
    _checkpoint(tmp_path, "run", "checkpoint_2026-01-01_00-00-01.000000")
    _checkpoint(tmp_path, "run", "checkpoint_2026-01-01_00-00-09.000000", state=False)  # killed mid-upload
    _snapshot(tmp_path, "run", "checkpoint_2026-01-01_00-00-01.000000")
    st = Storage(tmp_path)
    assert registered_checkpoint(st, "run") == "run/checkpoint_2026-01-01_00-00-01.000000"
    assert validate_resume(st, "run", "state.pt", ("progress.json",)).endswith("00-00-01.000000")


def test_nothing_to_resume_without_a_snapshot_or_a_registered_checkpoint(tmp_path):
    st = Storage(tmp_path)
    _checkpoint(tmp_path, "run", "checkpoint_a")
    assert validate_resume(st, "run", "state.pt") is None  # folders but no snapshot: Ray starts fresh
    _snapshot(tmp_path, "run", None)
    assert validate_resume(st, "run", "state.pt") is None
    assert validate_resume(st, "missing-run", "state.pt") is None


@pytest.mark.parametrize("damage, needle", [("truncate", "is corrupt"), ("remove", r"is incomplete \(no state.pt\)")])
def test_a_damaged_registered_checkpoint_is_one_line_naming_it(tmp_path, damage, needle):
    _checkpoint(tmp_path, "run", "checkpoint_a")
    _snapshot(tmp_path, "run", "checkpoint_a")
    state = tmp_path / "run" / "checkpoint_a" / "state.pt"
    if damage == "truncate":
        state.write_bytes(state.read_bytes()[:40])
    else:
        state.unlink()
    with pytest.raises(CheckpointError, match=needle) as err:
        validate_resume(Storage(tmp_path), "run", "state.pt", ("progress.json",))
    assert "checkpoint_a" in str(err.value) and "\n" not in str(err.value)


def test_an_unreadable_snapshot_is_one_line(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / SNAPSHOT).write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable"):
        validate_resume(Storage(tmp_path), "run", "state.pt")
