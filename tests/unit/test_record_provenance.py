"""`make_record` writes what a run actually used, not the config's defaults: the bank's key and version count and
the DDPM that built it (from the bank's manifest), the t-range, the per-epoch history and the hardware."""

from __future__ import annotations

import json
import os

import torch

from dia_ray.config import TrainConfig
from dia_ray.distributed.bank import MANIFEST, BankCounts, Manifest
from dia_ray.distributed.train_dia import hardware, make_record
from dia_ray.results.records import ResultRecord


def final_of(cfg: TrainConfig) -> dict:
    """The final evaluation a worker writes (train_dia._worker), for a 2-epoch run."""
    history = [{"epoch": 1, "iterations": 10, "loss": 5.1, "lr": 0.3, "auroc": 0.61},
               {"epoch": 2, "iterations": 10, "loss": 4.7, "lr": 0.5, "auroc": 0.66}]
    return {"auroc_last": 0.66, "auroc_best_test": 0.66, "best_epoch": 2, "epochs": 2, "test_scores": [0.2, 0.9, 0.4],
            "test_labels": [0, 1, 1], "wall_time_s": 72.0, "images_per_s": 30.0, "workers": 2, "device": "cpu",
            "starts": [0], "history": history, "n_train": 100, "n_test": 3, "t_range": [30, 130],
            "hardware": hardware(torch.device("cpu"))}


def test_bank_run_records_the_bank_its_ddpm_and_the_t_range_it_used(tmp_path):
    ddpm = tmp_path / "ddpm" / "synthetic-r32-5c78b16ed492" / "model"
    bank = tmp_path / "banks" / "synthetic-r32-t30-130-k4-0123456789ab"
    bank.mkdir(parents=True)
    manifest = Manifest(bank_version=1, key=bank.name, config={"ddpm_path": str(ddpm), "t_min": 30, "t_max": 130},
                        counts=BankCounts(images=100, versions=4, rows=400), files=[], content_hash="", build={})
    (bank / MANIFEST).write_text(json.dumps(manifest.model_dump(mode="json")))
    cfg = TrainConfig(dataset="synthetic", method="dia", epochs=2)  # config: t_min None, bank_versions 8
    rec = make_record(cfg, final_of(cfg), bank_path=bank, extra={"sweep": "demo", "trial_dir": str(tmp_path / "t")})
    assert (cfg.dissolve.t_min, cfg.dissolve.bank_versions) == (None, 8)
    assert (rec.t_range, rec.bank_key, rec.bank_versions) == ([30, 130], bank.name, 4)
    assert (rec.ddpm_path, rec.ddpm_key, rec.bank_path) == (str(ddpm), "synthetic-r32-5c78b16ed492", str(bank))
    assert rec.dissolve_mode == "bank" and rec.history == final_of(cfg)["history"]
    assert rec.trial_dir == str(tmp_path / "t") and rec.hardware.endswith(f" ({os.cpu_count()} CPUs)")
    assert ResultRecord.model_validate_json(rec.model_dump_json()) == rec  # survives the JSON round trip


def test_online_and_csi_runs_record_only_what_they_used(tmp_path):
    ddpm = tmp_path / "ddpm" / "kvasir-r32-abc" / "model"
    cfg = TrainConfig(dataset="synthetic", method="dia", epochs=2)
    online = make_record(cfg, final_of(cfg), ddpm_path=ddpm)
    assert (online.dissolve_mode, online.ddpm_key, online.bank_key, online.bank_versions) == (
        "online", "kvasir-r32-abc", None, None)
    csi_cfg = TrainConfig(dataset="synthetic", method="csi", epochs=2)
    csi = make_record(csi_cfg, {**final_of(csi_cfg), "t_range": None})
    assert (csi.dissolve_mode, csi.t_range, csi.ddpm_key, csi.bank_key) == ("none", None, None, None)
