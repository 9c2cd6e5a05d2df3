"""The result record: one JSON object per (dataset, method, config, seed) run, stored as JSON lines.

Every trial writes its records to its own ``*.jsonl`` file under the storage root when it finishes, in one piece
(a local temp file renamed, or one object-store PUT), so a reader never sees half a line from a crashed writer (a truncated last line from an
older writer is reported and skipped by the collector, see :mod:`dia_ray.results.collect`).
Schema changes bump :data:`SCHEMA_VERSION`; :func:`upgrade` lifts older records.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA_VERSION = 3

Method = Literal["dia", "csi", "blur-gaussian", "blur-median", "disyre"]


class ResultRecord(BaseModel):
    """One finished run. ``auroc_last`` is the honest number (last epoch); ``auroc_best_test`` picks the epoch on
    test AUROC as the paper did and is used only for the paper-comparison column."""

    model_config = ConfigDict(extra="allow")

    schema_version: int = SCHEMA_VERSION
    record_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    created_at: float = Field(default_factory=time.time)
    dataset: str
    method: str
    seed: int
    config_hash: str  # hash of the full config without the seed: records with equal hashes are seeds of one config
    config: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, Any] = Field(default_factory=dict)  # the swept / notable parameters, for tables and plots
    auroc_last: float
    auroc_best_test: float
    best_epoch: int
    epochs: int
    test_scores: list[float] = Field(default_factory=list)  # CSI scores, higher = more normal, test-set order
    test_labels: list[int] = Field(default_factory=list)  # 1 = normal, 0 = anomaly
    wall_time_s: float = 0.0
    images_per_s: float = 0.0
    workers: int = 1
    device: str = "cpu"
    device_hours: float = 0.0  # workers x wall time (GPU-hours on GPUs, CPU-worker-hours on CPU)
    dissolve_mode: str = "online"
    sweep: str | None = None
    trial_id: str | None = None
    trial_dir: str | None = None  # the Tune trial's folder in storage (sweeps only)
    versions: dict[str, str] = Field(default_factory=dict)  # of the stack that trained: dia_ray, torch, ray, python
    hardware: str = ""  # the GPU's name, or the CPU model and core count
    history: list[dict[str, Any]] = Field(default_factory=list)  # per-epoch metrics (loss, lr, auroc when evaluated)
    # Provenance: what the run actually dissolved with (the config may leave these to defaults, e.g. t_min=None).
    t_range: list[int] | None = None  # dissolving step range t ~ U(lo, hi) (diffusion only)
    ddpm_key: str | None = None
    ddpm_path: str | None = None
    bank_key: str | None = None
    bank_path: str | None = None
    bank_versions: int | None = None  # versions per image in the bank trained on


def upgrade(raw: dict[str, Any]) -> dict[str, Any]:
    """Lift a record of an older schema version to the current one (raises ``ValueError`` if it cannot)."""
    version = int(raw.get("schema_version", 1))
    if version > SCHEMA_VERSION:
        raise ValueError(f"schema_version {version} is newer than this dia-ray understands ({SCHEMA_VERSION})")
    out = dict(raw)
    if version == 1:
        # v1 had a single `auroc` (last epoch) and no best-on-test number, nor per-image scores.
        if "auroc" in out and "auroc_last" not in out:
            out["auroc_last"] = out.pop("auroc")
        out.setdefault("auroc_best_test", out.get("auroc_last"))
        out.setdefault("epochs", 0)
        out.setdefault("best_epoch", out["epochs"])
    # v2 -> v3 added only optional fields (history, hardware, trial_dir, provenance): their defaults apply.
    out["schema_version"] = SCHEMA_VERSION
    return out


def write_records(location: str | os.PathLike, records: list[ResultRecord]) -> str:
    """Write ``records`` as JSON lines to ``location`` (a local path or a storage URI such as ``s3://b/p/x.jsonl``)
    in one piece: a reader sees the whole file or none of it (:meth:`dia_ray.storage.Storage.write_bytes`)."""
    from dia_ray.storage import Storage

    text = "".join(json.dumps(rec.model_dump(mode="json")) + "\n" for rec in records)
    parent, _, name = str(location).rstrip("/").rpartition("/")
    return Storage(parent or ".").write_text(text, name)
