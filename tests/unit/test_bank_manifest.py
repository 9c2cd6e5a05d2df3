"""The dissolved bank without a Ray cluster: the deterministic (seed, image, version) → (t, flip) draw, the cache key,
and the manifest that guards every read (built with the single-process loop on a tiny random DDPM)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dia_ray.distributed import bank
from dia_ray.distributed.bank import (
    MANIFEST,
    bank_info,
    bank_key,
    build_bank_local,
    load_bank_versions,
    verify_bank,
    version_draws,
)
from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import BankError

N_TRAIN = 600  # the synthetic dataset's normal train split


def tiny_ddpm(path: Path, seed: int = 0) -> Path:
    """A random (untrained) DDPM, small enough to dissolve 600 images in about a second."""
    from dia_ray.algo.ddpm import new_state, save_ddpm
    from dia_ray.config import DDPMConfig, UNetConfig

    cfg = DDPMConfig(steps=2, batch_size=8, grad_accum=1, seed=seed,
                     unet=UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention_head_dim=8,
                                     attention_max_size=8))
    return save_ddpm(path, new_state(cfg), cfg)


@pytest.fixture(scope="module")
def ddpm(tmp_path_factory) -> Path:
    return tiny_ddpm(tmp_path_factory.mktemp("ddpm") / "model")


@pytest.fixture(scope="module")
def built(tmp_path_factory, ddpm, synthetic_root):
    """A K=2 bank of the synthetic dataset from the local loop: (ref, storage, BankInfo)."""
    storage = tmp_path_factory.mktemp("storage")
    ref = DataRef("synthetic", str(synthetic_root))
    info = build_bank_local(ref, ddpm, storage, t_range=(30, 130), versions=2, batch_size=256)
    return ref, storage, info


def damaged_copy(info, tmp_path: Path) -> Path:
    dst = tmp_path / Path(info.path).name
    shutil.copytree(info.path, dst)
    return dst


# --- the draw -------------------------------------------------------------------------------------------------------


def test_draw_is_a_pure_function_of_seed_image_and_version():
    ids = np.arange(1000)
    t_all, f_all = version_draws(7, ids[:, None], np.arange(8)[None, :], 30, 130)
    # one image at a time, versions in reverse order: the same numbers (batching and order do not matter)
    for i in (0, 17, 999):
        for v in reversed(range(8)):
            t, f = version_draws(7, i, v, 30, 130)
            assert (int(t), bool(f)) == (t_all[i, v], f_all[i, v])
    t_other, _ = version_draws(8, ids[:, None], np.arange(8)[None, :], 30, 130)
    assert (t_other != t_all).mean() > 0.9  # another seed, other draws


def test_draw_covers_the_half_open_t_range_and_both_flips():
    t, flip = version_draws(0, np.arange(5000), 3, 30, 40)
    assert t.min() == 30 and t.max() == 39  # t_max excluded
    assert set(np.unique(t)) == set(range(30, 40))
    counts = np.bincount(t - 30)
    assert counts.min() > 400 and counts.max() < 600  # ~uniform: 500 each
    assert 0.45 < flip.mean() < 0.55
    t1, f1 = version_draws(0, np.arange(20), np.arange(20), 30, 130)
    assert f1.any() and (~f1).any() and ((30 <= t1) & (t1 < 130)).all()


# --- the key ----------------------------------------------------------------------------------------------------------


def test_bank_key_changes_when_any_input_changes(ddpm, tmp_path, monkeypatch):
    ref = DataRef("synthetic", "/nowhere")  # the key needs no data on disk
    base = dict(t_range=(30, 130), versions=8, resolution=32, seed=0, input_range="raw01", use_ema=False)
    key = bank_key(ddpm, ref, **base)
    assert key.startswith("synthetic-r32-t30-130-k8-")
    assert bank_key(ddpm, DataRef("synthetic", "/elsewhere", normal_class="0"), **base) == key  # default ≡ explicit
    other_weights = tiny_ddpm(tmp_path / "other", seed=1)
    variants = [
        bank_key(other_weights, ref, **base),
        bank_key(ddpm, DataRef("synthetic", "/nowhere", normal_class="1"), **base),
        bank_key(ddpm, DataRef("synthetic-folder", "/nowhere"), **base),
        bank_key(ddpm, DataRef("synthetic-folder", "/nowhere", image_size=32), **base),
        *(bank_key(ddpm, ref, **{**base, name: value}) for name, value in [
            ("t_range", (30, 131)), ("t_range", (31, 130)), ("versions", 4), ("resolution", 64), ("seed", 1),
            ("input_range", "pm1"), ("use_ema", True)]),
    ]
    monkeypatch.setattr(bank, "BANK_VERSION", bank.BANK_VERSION + 1)
    variants.append(bank_key(ddpm, ref, **base))
    assert key not in variants and len(set(variants)) == len(variants)


def test_bank_key_follows_the_weights_not_the_folder(ddpm, tmp_path):
    ref = DataRef("synthetic", "/nowhere")
    copy = tmp_path / "copy"
    shutil.copytree(ddpm, copy)
    kw = dict(t_range=(30, 130), versions=2, resolution=32, seed=0)
    assert bank_key(copy, ref, **kw) == bank_key(ddpm, ref, **kw)
    weights = next((copy / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    assert bank_key(copy, ref, **kw) != bank_key(ddpm, ref, **kw)


# --- the manifest -----------------------------------------------------------------------------------------------------


def test_manifest_lists_every_file_with_size_and_sha256(built):
    ref, storage, info = built
    assert info.built and Path(info.path) == storage / "banks" / info.key
    m = verify_bank(info.path)
    assert (m.counts.images, m.counts.versions, m.counts.rows) == (N_TRAIN, 2, 2 * N_TRAIN)
    assert sorted(f.name for f in m.files) == sorted(p.name for p in Path(info.path).glob("*.parquet"))
    assert len(m.files) == 3 and sum(f.rows for f in m.files) == 2 * N_TRAIN  # 600 images in batches of 256
    for f in m.files:
        assert (Path(info.path) / f.name).stat().st_size == f.bytes and len(f.sha256) == 64
    cfg = m.config
    assert (cfg["dataset"], cfg["split"], cfg["normal_class"], cfg["image_size"]) == ("synthetic", "train", ["0"], 28)
    assert (cfg["t_min"], cfg["t_max"], cfg["versions"], cfg["resolution"], cfg["seed"]) == (30, 130, 2, 32, 0)
    assert cfg["pixels"] == {"dtype": "float16", "shape": [3, 32, 32], "column": "ray.data tensor (ArrowTensorTypeV2)",
                             "range": "[-1, 1]"}
    assert m.build["engine"] == "local" and m.build["actors_used"] == ["local"] and m.build["rows_per_s"] > 0
    assert not list(Path(info.path).parent.glob(".*tmp-*"))  # the staging directory was renamed, not left behind
    listing = bank_info(info.path)
    assert listing["size_bytes"] >= sum(f.bytes for f in m.files) and listing["counts"]["rows"] == 2 * N_TRAIN


def test_loaded_versions_are_aligned_with_the_train_images(built):
    import pyarrow.parquet as pq
    import torch

    ref, _, info = built
    v = load_bank_versions(info.path, N_TRAIN)
    assert v.shape == (N_TRAIN, 2, 3, 32, 32) and v.dtype == torch.float16
    assert float(v.min()) >= -1.0 and float(v.max()) <= 1.0
    assert (v[:, 0] != v[:, 1]).any()  # two versions, two different (t, flip)
    # row (i, k) of the tensor is the Parquet row with image_id i, version k
    table = pq.read_table(Path(info.path) / verify_bank(info.path).files[-1].name)
    i, k = table.column("image_id")[5].as_py(), table.column("version")[5].as_py()
    px = bank._pixels(table.column("pixels").slice(5, 1), (3, 32, 32))[0]
    assert np.array_equal(v[i, k].numpy(), px)
    t, flip = version_draws(0, i, k, 30, 130)
    assert table.column("t")[5].as_py() == int(t) and table.column("flip")[5].as_py() == bool(flip)
    sub = np.array([3, 1, 599])
    assert torch.equal(load_bank_versions(info.path, 3, indices=sub), v[sub])


def test_load_refuses_a_bank_of_other_size_or_out_of_range_indices(built):
    _, _, info = built
    with pytest.raises(BankError, match="holds 600 images but training uses 599"):
        load_bank_versions(info.path, 599)
    with pytest.raises(BankError, match="out of range"):
        load_bank_versions(info.path, 2, indices=[0, 600])


def test_second_build_is_a_no_op_and_force_rebuilds(built, ddpm, tmp_path):
    ref, _, info = built
    storage = tmp_path / "storage"
    shutil.copytree(info.path, storage / "banks" / info.key)
    path = storage / "banks" / info.key
    mtimes = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    again = build_bank_local(ref, ddpm, storage, t_range=(30, 130), versions=2, batch_size=256)
    assert not again.built and again.key == info.key and again.manifest == info.manifest
    assert {p.name: p.stat().st_mtime_ns for p in path.iterdir()} == mtimes
    forced = build_bank_local(ref, ddpm, storage, t_range=(30, 130), versions=2, batch_size=400, force=True)
    assert forced.built and Path(forced.path) == path and len(forced.manifest.files) == 2
    assert forced.manifest.build["created"] >= info.manifest.build["created"]
    assert np.array_equal(load_bank_versions(forced.path, N_TRAIN).numpy(),
                          load_bank_versions(info.path, N_TRAIN).numpy())


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"file part-00001\.parquet has \d+ bytes, the manifest says \d+"),
    ("delete", r"file part-00001\.parquet is missing"),
    ("flip-byte", r"file part-00001\.parquet does not match its sha256"),
    ("no-manifest", r"no manifest\.json \(incomplete or not a bank\)"),
    ("bad-manifest", r"manifest\.json is unreadable"),
])
def test_damaged_bank_is_never_read(built, tmp_path, damage, message):
    _, _, info = built
    path = damaged_copy(info, tmp_path)
    target = path / "part-00001.parquet"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-100])
    elif damage == "delete":
        target.unlink()
    elif damage == "flip-byte":
        raw = bytearray(target.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        target.write_bytes(bytes(raw))
    elif damage == "no-manifest":
        (path / MANIFEST).unlink()
    else:
        (path / MANIFEST).write_text(json.dumps({"bank_version": 1}))
    for read in (verify_bank, bank_info, lambda p: load_bank_versions(p, N_TRAIN)):
        with pytest.raises(BankError, match=message) as err:
            read(path)
        assert "\n" not in str(err.value) and "--force" in str(err.value)


def test_an_invalid_bank_in_storage_is_rebuilt(built, ddpm, tmp_path):
    ref, _, info = built
    storage = tmp_path / "storage"
    shutil.copytree(info.path, storage / "banks" / info.key)
    (storage / "banks" / info.key / "part-00000.parquet").unlink()
    rebuilt = build_bank_local(ref, ddpm, storage, t_range=(30, 130), versions=2, batch_size=256)
    assert rebuilt.built and verify_bank(rebuilt.path).content_hash == info.manifest.content_hash


def test_the_local_builder_and_the_manifest_checks_never_start_ray(ddpm, synthetic_root, tmp_path):
    """Run in a fresh interpreter: the session's shared cluster (integration tests) must not hide a stray init."""
    import subprocess
    import sys

    code = (
        "import ray\n"
        "from dia_ray.distributed.bank import build_bank_local, verify_bank, bank_info\n"
        "from dia_ray.distributed.dataref import DataRef\n"
        f"info = build_bank_local(DataRef('synthetic', {str(synthetic_root)!r}), {str(ddpm)!r}, {str(tmp_path)!r},"
        " t_range=(30, 130), versions=1, batch_size=256)\n"
        "verify_bank(info.path); bank_info(info.path)\n"
        "assert not ray.is_initialized(), 'a Ray cluster was started'\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
