"""Realistic result records for the results-layer tests, written as a sweep leaves them.

Every record is what ``make_record`` in ``dia_ray/distributed/train_dia.py`` writes: the full TrainConfig, per-image
last-epoch test scores whose AUROC is the record's ``auroc_last``, a per-epoch history whose last evaluated AUROC is
``auroc_last`` and whose best is ``auroc_best_test``, provenance (t-range, bank, DDPM), versions, hardware, the
sweep and the Tune trial folder the record sits in.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from dia_ray.config import TrainConfig
from dia_ray.data.registry import REGISTRY
from dia_ray.results.records import ResultRecord, write_records

DATASETS = ("pneumoniamnist", "kvasir")
SEEDS = (0, 1, 2)
EPOCHS = 6
EVAL_EVERY = 2
# (method, params, how far normal scores sit above anomalous ones): DIA clearly ahead of CSI.
CONFIGS = (
    ("dia", {"t_min": 30, "t_max": 130}, 1.6),
    ("dia", {"t_min": 130, "t_max": 230}, 1.2),
    ("csi", {}, 0.5),
    ("blur-gaussian", {"kernel_size": 3}, 0.8),
    ("blur-gaussian", {"kernel_size": 7}, 1.0),
)
VERSIONS = {"dia_ray": "0.1.0", "torch": "2.13.0+cpu", "ray": "2.60.0", "python": "3.11.9"}
T0 = 1_780_000_000.0  # 2026-05-28: records finish over the following hours


def shared_test_set(dataset: str) -> tuple[np.ndarray, np.ndarray]:
    """Labels (60 normal, 80 anomalous, shuffled) and a per-image difficulty shared by every method."""
    rng = np.random.default_rng(DATASETS.index(dataset) if dataset in DATASETS else 99)
    return rng.permutation(np.r_[np.ones(60, int), np.zeros(80, int)]), rng.normal(size=140)


def config_of(dataset: str, method: str, params: dict, seed: int) -> TrainConfig:
    dissolve = {key: params[key] for key in ("t_min", "t_max", "kernel_size") if params.get(key) is not None}
    return TrainConfig.model_validate({"dataset": dataset, "method": method, "seed": seed, "epochs": EPOCHS,
                                       "max_iters_per_epoch": 10, "dissolve": dissolve,
                                       "eval": {"every": EVAL_EVERY, "samples": 2}})


def make_record(dataset, method, params, separation, seed, **changes) -> ResultRecord:
    labels, difficulty = shared_test_set(dataset)
    rng = np.random.default_rng([seed, len(method), int(10 * separation)])
    scores = separation * labels + difficulty + 0.5 * rng.normal(size=labels.size)
    auc = float(roc_auc_score(labels, scores))
    history = []
    for epoch in range(1, EPOCHS + 1):
        entry = {"epoch": epoch, "iterations": 10, "loss": 6.0 - 0.5 * epoch + 0.1 * rng.random(),
                 "lr": 0.1 + 0.15 * epoch}
        if epoch % EVAL_EVERY == 0:
            entry["auroc"] = auc if epoch == EPOCHS else auc - 0.02 * (EPOCHS - epoch) + 0.06 * rng.random()
        history.append(entry)
    evaluated = [(h["auroc"], h["epoch"]) for h in history if "auroc" in h]
    best, best_epoch = max(evaluated)
    cfg = config_of(dataset, method, params, seed)
    wall = 60.0 + 15 * seed + 10 * separation
    fields = dict(
        dataset=dataset, method=method, seed=seed, params=params, config=cfg.model_dump(mode="json"),
        config_hash=cfg.config_hash(), created_at=T0 + 3600 * len(dataset) + 60 * seed + separation,
        auroc_last=auc, auroc_best_test=best, best_epoch=best_epoch, epochs=EPOCHS, history=history,
        test_scores=scores.tolist(), test_labels=labels.tolist(), wall_time_s=wall,
        images_per_s=2.0 + seed + separation, workers=2, device_hours=2 * wall / 3600, device="cpu",
        hardware="AMD EPYC 7B13 (2 CPUs)", versions=VERSIONS, sweep="demo",
        dissolve_mode="bank" if method == "dia" else ("none" if method == "csi" else "online"),
    )
    if method == "dia":
        lo, hi = params.get("t_min", REGISTRY[dataset].t_range[0]), params.get("t_max", REGISTRY[dataset].t_range[1])
        fields.update(t_range=[lo, hi], bank_key=f"{dataset}-r32-t{lo}-{hi}-k4-0123456789ab", bank_versions=4,
                      ddpm_key=f"{dataset}-r32-5c78b16ed492",
                      ddpm_path=f"/storage/ddpm/{dataset}-r32-5c78b16ed492/model")
    return ResultRecord(**{**fields, **changes})


def write_benchmark(root: Path) -> list[ResultRecord]:
    """5 configs x 2 datasets x 3 seeds: the first 20 records in ROOT/results, the rest one per Tune-like trial
    folder ``ROOT/sweeps/demo/<dataset>/tune/<trial>/records.jsonl`` (whose path the record carries)."""
    records = [make_record(d, m, p, sep, s) for d in DATASETS for m, p, sep in CONFIGS for s in SEEDS]
    write_records(root / "results" / "part1.jsonl", records[:20])
    for i, rec in enumerate(records[20:]):
        trial = root / "sweeps" / "demo" / rec.dataset / "tune" / f"dia_trial_demo_{i:05d}_{rec.method}"
        records[20 + i] = rec = rec.model_copy(update={"trial_id": f"{i:05d}", "trial_dir": str(trial)})
        write_records(trial / "records.jsonl", [rec])
    return records


def read_jsonl_independently(root: Path) -> pd.DataFrame:
    rows = [json.loads(line) for path in sorted(root.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    return pd.DataFrame(rows)
