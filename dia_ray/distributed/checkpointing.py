"""Checkpoint plumbing shared by the Train wrappers: report a checkpoint written by a callback, and refuse to resume
from a corrupt one (one clear line instead of a worker crash loop)."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dia_ray.errors import CheckpointError

SNAPSHOT = "checkpoint_manager_snapshot.json"


def report_with_checkpoint(metrics: dict[str, Any], write: Callable[[Path], None], local_mode: bool) -> None:
    """Rank 0: write the checkpoint into a fresh directory and report it. Ray uploads it to the run's storage and
    deletes the local copy; in local mode (num_workers=0) Ray keeps pointing at the directory, so it must stay."""
    import ray.train

    tmp = Path(tempfile.mkdtemp(prefix="dia-ray-ckpt-"))
    try:
        write(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(tmp)),
                         delete_local_checkpoint_after_upload=not local_mode)
    finally:
        if not local_mode:
            shutil.rmtree(tmp, ignore_errors=True)


def latest_checkpoint_dir(run_dir: Path) -> Path | None:
    """The newest ``checkpoint_*`` folder of a Ray Train run directory (None when the run never checkpointed)."""
    if not run_dir.is_dir():
        return None
    found = sorted(p for p in run_dir.glob("checkpoint_*") if p.is_dir())
    return found[-1] if found else None


def validate_resume(run_dir: Path, state_file: str, required: tuple[str, ...] = ()) -> Path | None:
    """Before resuming ``run_dir``: the latest checkpoint must load (``torch.load(weights_only=True)``) and hold the
    ``required`` files, else raise :class:`CheckpointError` naming it."""
    import torch

    ckpt = latest_checkpoint_dir(run_dir)
    if ckpt is None:
        return None
    for name in (state_file, *required):
        if not (ckpt / name).is_file():
            raise CheckpointError(f"checkpoint {ckpt} is incomplete (no {name}); delete {run_dir} to start over")
    try:
        torch.load(ckpt / state_file, map_location="cpu", weights_only=True)
        for name in required:
            if name.endswith(".json"):
                json.loads((ckpt / name).read_text())
    except Exception as err:  # noqa: BLE001 - any decode failure means the file is unusable
        raise CheckpointError(f"checkpoint {ckpt} is corrupt ({type(err).__name__}); delete {run_dir} to start "
                              "over") from None
    return ckpt
