"""The dissolved bank on a real (2-CPU, local) Ray cluster: an actor pool of 2 builds it, it equals the
single-process loop's bank, a second build does nothing, training with it runs no UNet, and a damaged bank is
refused by the library and by ``dia-ray bank info``."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from dia_ray.distributed.bank import build_bank, build_bank_local, load_bank_versions, verify_bank
from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import BankError

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
N_TRAIN, K, T_RANGE = 600, 2, (30, 130)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory) -> Path:
    from dia_ray.algo.ddpm import new_state, save_ddpm
    from dia_ray.config import DDPMConfig, UNetConfig

    cfg = DDPMConfig(steps=2, batch_size=8, grad_accum=1,
                     unet=UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=8,
                                     attention_max_size=8))
    return save_ddpm(tmp_path_factory.mktemp("ddpm") / "model", new_state(cfg), cfg)


@pytest.fixture(scope="module")
def ref(synthetic_root) -> DataRef:
    return DataRef("synthetic", str(synthetic_root))


@pytest.fixture(scope="module")
def pool_bank(ray_cluster, tmp_path_factory, ddpm, ref):
    """Built once by 2 actors (0.5 CPU each) in batches of 50 images: 12 batches for the pool to share."""
    storage = tmp_path_factory.mktemp("storage")
    info = build_bank(ref, ddpm, storage, t_range=T_RANGE, versions=K, actors=2, batch_size=50,
                      num_cpus_per_actor=0.5, progress=False)
    return storage, info


def test_actor_pool_writes_every_image_version_with_several_actors(pool_bank):
    import ray.data

    storage, info = pool_bank
    assert info.built and Path(info.path) == storage / "banks" / info.key
    b = info.manifest.build
    assert b["engine"] == "ray-data" and b["actors"] == 2
    ds = ray.data.read_parquet(str(info.path)).materialize()
    assert ds.count() == N_TRAIN * K
    schema = ds.schema()
    assert schema.names == ["image_id", "version", "t", "flip", "pixels", "actor"]
    rows = ds.to_pandas()
    assert rows["actor"].nunique() > 1 and sorted(rows["actor"].unique()) == b["actors_used"]
    assert len(rows.groupby(["image_id", "version"])) == N_TRAIN * K
    assert rows["t"].between(*T_RANGE, inclusive="left").all() and rows["flip"].nunique() == 2
    px = ds.take_batch(4)["pixels"]
    assert px.shape == (4, 3, 32, 32) and px.dtype == np.float16


def test_actor_pool_bank_equals_the_local_loop(pool_bank, tmp_path, ddpm, ref):
    _, info = pool_bank
    local = build_bank_local(ref, ddpm, tmp_path, t_range=T_RANGE, versions=K, batch_size=128)
    assert local.key == info.key  # same inputs, same bank: interchangeable
    a, b = load_bank_versions(info.path, N_TRAIN).float(), load_bank_versions(local.path, N_TRAIN).float()
    assert a.shape == b.shape == (N_TRAIN, K, 3, 32, 32)
    assert torch.allclose(a, b, atol=2e-3, rtol=0)  # float16 storage; batching must not change a row


def test_second_build_is_a_no_op_that_starts_no_dataset(pool_bank, ddpm, ref, monkeypatch):
    import ray.data

    from dia_ray.distributed import bank

    storage, info = pool_bank

    def refuse(*args, **kwargs):
        raise AssertionError("a Ray Dataset was created for a bank that exists")

    for name in ("from_items", "from_numpy", "from_arrow", "from_pandas"):
        monkeypatch.setattr(ray.data, name, refuse)
    monkeypatch.setattr(bank, "DissolveActor", None)
    before = {p.name: p.stat().st_mtime_ns for p in Path(info.path).iterdir()}
    again = build_bank(ref, ddpm, storage, t_range=T_RANGE, versions=K, actors=2, batch_size=50)
    assert not again.built and Path(again.path) == Path(info.path)
    assert again.manifest.build["created"] == info.manifest.build["created"]
    assert {p.name: p.stat().st_mtime_ns for p in Path(info.path).iterdir()} == before  # no file added or rewritten


def test_training_with_the_bank_runs_no_unet(pool_bank, ddpm, ref, monkeypatch):
    from dia_ray.algo import dissolve as dissolve_mod
    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.dissolve import BankDissolver, DiffusionDissolver
    from dia_ray.algo.loops import DIAData, fit
    from dia_ray.algo.resolution import to_float01
    from dia_ray.algo.unet import LucidUnet
    from dia_ray.distributed.pipeline import train_config

    _, info = pool_bank
    data = ref.load()
    x = to_float01(torch.from_numpy(data.train.images[:16]))
    idx = torch.arange(16)
    unet, scheduler, _ = load_ddpm(ddpm)
    online_dissolver = DiffusionDissolver(unet, scheduler.alphas_cumprod, T_RANGE, 32)
    online = online_dissolver(x, idx, 4, torch.Generator().manual_seed(0))

    def no_unet(*args, **kwargs):
        raise AssertionError("a UNet ran during bank-mode training")

    monkeypatch.setattr(LucidUnet, "forward", no_unet)
    monkeypatch.setattr(dissolve_mod, "dissolve", no_unet)
    dissolver = BankDissolver(load_bank_versions(info.path, N_TRAIN))
    banked = dissolver(x, idx, 4, torch.Generator().manual_seed(0))
    assert banked.shape == online.shape == (64, 3, 28, 28)
    for out in (banked, online):
        assert float(out.min()) >= -1.0 and float(out.max()) <= 1.0
    gap_bank, gap_online = ((d - x.repeat(4, 1, 1, 1)).abs().mean().item() for d in (banked, online))
    assert 0.5 < gap_bank / gap_online < 2.0  # same DDPM, same t range and flips: same amount of dissolving

    cfg = train_config("synthetic", "dia", "tiny", {"epochs": 1, "dissolve": {"mode": "bank"}})
    keep = np.r_[np.flatnonzero(data.test.labels == 1)[:20], np.flatnonzero(data.test.labels == 0)[:20]]
    state = fit(cfg, DIAData.from_arrays(data.train.images, data.test.images[keep], data.test.labels[keep]),
                dissolver)
    assert state.epoch == 1 and dissolver.calls == 1 + cfg.max_iters_per_epoch  # 1 = the comparison above
    assert np.isfinite(state.history[-1]["loss"])
    # one epoch promises no AUROC above chance; the AUROC must be the one of the scores it was computed from
    assert state.last_auroc == pytest.approx(roc_auc_score(data.test.labels[keep], state.last_scores), abs=1e-12)


@pytest.mark.parametrize("damage", ["truncate", "delete"])
def test_damaged_bank_is_refused_by_library_and_cli(pool_bank, tmp_path, damage):
    _, info = pool_bank
    path = tmp_path / info.key
    shutil.copytree(info.path, path)
    victim = verify_bank(path).files[1].name
    if damage == "truncate":
        (path / victim).write_bytes((path / victim).read_bytes()[:-64])
    else:
        (path / victim).unlink()
    with pytest.raises(BankError, match=victim):
        verify_bank(path)
    done = subprocess.run([sys.executable, "-m", "dia_ray", "bank", "info", str(path)], capture_output=True,
                          text=True, cwd=REPO, env={**os.environ, "DIA_RAY_LOG_LEVEL": "WARNING"}, timeout=120)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and victim in lines[0] and "--force" in lines[0], done.stderr
    assert done.stdout == ""


def test_cli_info_prints_manifest_counts_and_size(pool_bank):
    _, info = pool_bank
    done = subprocess.run([sys.executable, "-m", "dia_ray", "bank", "info", str(info.path)], capture_output=True,
                          text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"counts:    {N_TRAIN} images x {K} versions = {N_TRAIN * K} rows" in done.stdout
    assert "MiB on disk" in done.stdout and f'"key": "{info.key}"' in done.stdout
