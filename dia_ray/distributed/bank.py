"""Stage [2]: the dissolved bank (``dissolve.mode: bank``, ALGORITHM.md §0 — a documented deviation from the paper's
online dissolving). Every normal training image gets K dissolved versions, computed once by a Ray Data actor pool
that holds the DDPM, and stored as Parquet at ``STORAGE/banks/<key>/``; training then draws one version per image
per (batch, shift) group (:class:`~dia_ray.algo.dissolve.BankDissolver`) and never runs a UNet.

Version v of image i: t and a horizontal-flip bit are a pure function of (seed, i, v) (:func:`version_draws`), so
the bank does not depend on batching, on the number of actors or on which actor ran a row; per §3.3/§3.4 the
image is flipped, brought to the DDPM resolution r (:func:`~dia_ray.algo.resolution.to_ddpm`) and dissolved there
(D_t of §3.1, per-sample t in one UNet call, §3.6). The result is stored at r; the trainer maps it back to the
learner's size (``from_ddpm``). One t per image (not per batch group as online) is part of the deviation.

Parquet rows (one per image and version): ``image_id`` int64 (row index in the dataset's normal train split, the
order of ``DataRef.load().train.images``), ``version`` int32, ``t`` int32, ``flip`` bool, ``pixels`` float16 (3, r, r)
as Ray Data's fixed-shape tensor column (``ArrowTensorTypeV2``; in Parquet a ``large_list<halffloat>`` whose field
metadata carries the shape, so plain pyarrow reads it too), and ``actor`` (the Ray actor id that computed the row,
``local`` for :func:`build_bank_local`). Values: raw01 input range → [-1, 1] (§3.1 quirk), pm1 → [0, 1].

A bank is written to a staging directory beside its final place and renamed when complete, with ``manifest.json``
(config, counts, files with sizes and sha256, content hash, build time, throughput); :func:`verify_bank` checks all
of it before anything is read, so an incomplete or damaged bank is never used.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import platform
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from dia_ray.distributed.dataref import DataRef
from dia_ray.errors import BankError, ClusterError, ConfigError, StorageError
from dia_ray.storage import Storage, open_storage
from dia_ray.progress import Progress, parquet_rows, watch

log = logging.getLogger(__name__)

BANK_VERSION = 1  # bump when the row layout or the draw changes: old banks then get new keys
MANIFEST = "manifest.json"
PIXEL_DTYPE = "float16"
REBUILD_HINT = "rebuild it with `dia-ray bank build ... --force`"

InputRange = Literal["raw01", "pm1"]


# ---------------------------------------------------------------------------------------------------------------------
# the deterministic draw of (t, flip) per (seed, image, version)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: a bijective avalanche of uint64 (wrap-around arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _u64(x: Any) -> np.ndarray:
    return np.atleast_1d(np.asarray(x, dtype=np.int64)).astype(np.uint64)


def _counter_hash(seed: int, image_ids: np.ndarray, versions: np.ndarray, stream: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        h = _mix64(_u64(seed) + _GOLDEN)
        h = _mix64(h ^ (_u64(image_ids) + _GOLDEN * np.uint64(2)))
        h = _mix64(h ^ (_u64(versions) + _GOLDEN * np.uint64(3)))
        return _mix64(h ^ (_u64(stream) + _GOLDEN * np.uint64(4)))


def version_draws(seed: int, image_ids: Any, versions: Any, t_min: int, t_max: int
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(t, flip) of version ``versions`` of images ``image_ids`` (broadcast together): t uniform on the integers of
    [t_min, t_max), flip a fair coin. A counter-based hash, not an RNG stream: the same (seed, image, version) gives
    the same draw in any batch, on any actor, in any order."""
    ids, vs = np.broadcast_arrays(np.asarray(image_ids), np.asarray(versions))
    u = (_counter_hash(seed, ids, vs, 0) >> np.uint64(11)).astype(np.float64) * 2.0**-53  # [0, 1)
    t = np.minimum(t_min + np.floor(u * (t_max - t_min)).astype(np.int64), t_max - 1)
    flip = (_counter_hash(seed, ids, vs, 1) >> np.uint64(63)) == 1
    return t.reshape(ids.shape), flip.reshape(ids.shape)


# ---------------------------------------------------------------------------------------------------------------------
# what a bank is: its recipe, its manifest


@dataclass(frozen=True)
class BankRecipe:
    """Everything that determines the bank's content (plus where the DDPM is)."""

    ddpm_path: str
    t_min: int
    t_max: int
    versions: int
    resolution: int
    seed: int
    input_range: str
    use_ema: bool


class BankFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    bytes: int
    sha256: str
    rows: int


class BankCounts(BaseModel):
    model_config = ConfigDict(extra="forbid")

    images: int
    versions: int
    rows: int


class Manifest(BaseModel):
    """``manifest.json`` of a complete bank."""

    model_config = ConfigDict(extra="forbid")

    bank_version: int
    key: str
    config: dict[str, Any]  # the key's inputs + data root, image hash, pixel layout
    counts: BankCounts
    files: list[BankFile]
    content_hash: str  # sha256 over the sorted (file name, file sha256) pairs
    build: dict[str, Any]  # engine, seconds, throughput, actors that ran, versions of the stack, time


@dataclass(frozen=True)
class BankInfo:
    path: str  # the bank's location (a folder or a URI)
    key: str
    manifest: Manifest
    built: bool  # False: a valid bank existed and was reused


def ddpm_fingerprint(ddpm_path: str | os.PathLike, use_ema: bool = False) -> str:
    """sha256 over the weights the bank dissolves with (``unet/`` or ``unet_ema/``) and the scheduler config (ᾱ_t);
    ``ddpm_path`` is a folder or a storage URI."""
    root = Storage(ddpm_path)
    part = "unet_ema" if use_ema else "unet"
    weights = [f"{part}/{n}" for n in root.list(part) if n.endswith((".safetensors", ".bin"))]
    sched = "scheduler/scheduler_config.json"
    if not weights or not root.is_file(sched):
        raise BankError(f"DDPM {root}: no weights in {part}/ or no {sched}; is it a dia-ray DDPM folder "
                        "(…/ddpm/<key>/model)?")
    h = hashlib.sha256()
    for rel in (*weights, sched):
        h.update(f"{rel}\0{hashlib.sha256(root.read_bytes(rel)).hexdigest()}\0".encode())
    return h.hexdigest()


def _data_identity(ref: DataRef) -> dict[str, Any]:
    """Dataset + split + normal class + image size, with the paper defaults resolved (None ≡ the default)."""
    from dia_ray.data.registry import get_spec

    spec = get_spec(ref.dataset, normal_class=ref.normal_class, image_size=ref.image_size)
    return {"dataset": ref.dataset, "split": "train", "normal_class": list(spec.normal_classes),
            "image_size": spec.image_size}


def _key_inputs(ddpm_hash: str, ref: DataRef, recipe: BankRecipe) -> dict[str, Any]:
    return {"bank_version": BANK_VERSION, "ddpm_sha256": ddpm_hash, **_data_identity(ref),
            "resolution": recipe.resolution, "t_min": recipe.t_min, "t_max": recipe.t_max,
            "versions": recipe.versions, "seed": recipe.seed, "input_range": recipe.input_range,
            "use_ema": recipe.use_ema}


def _key(ref: DataRef, recipe: BankRecipe, inputs: dict[str, Any]) -> str:
    from dia_ray.config import stable_hash

    return (f"{ref.dataset}-r{recipe.resolution}-t{recipe.t_min}-{recipe.t_max}-k{recipe.versions}-"
            f"{stable_hash(inputs)}")


def bank_key(ddpm_path: str | os.PathLike, ref: DataRef, t_range: tuple[int, int], versions: int, resolution: int,
             seed: int, input_range: InputRange = "raw01", use_ema: bool = False) -> str:
    """``<dataset>-r<r>-t<lo>-<hi>-k<K>-<hash>``: the hash covers the DDPM weights' sha256, the data (dataset, split
    'train', normal class, image size), r, the t range, K, the seed, the input range, use_ema and BANK_VERSION."""
    recipe = BankRecipe(str(ddpm_path), int(t_range[0]), int(t_range[1]), versions, resolution, seed, input_range,
                        use_ema)
    return _key(ref, recipe, _key_inputs(ddpm_fingerprint(ddpm_path, use_ema), ref, recipe))


def bank_dir(storage: str | os.PathLike | Storage, key: str) -> str:
    """The bank's location under the storage root: ``STORAGE/banks/<key>``."""
    return open_storage(storage).join("banks", key)


# ---------------------------------------------------------------------------------------------------------------------
# reading and checking


def _verified_files(st: Storage, manifest: Manifest) -> Iterator[tuple[BankFile, bytes]]:
    """Each listed file's bytes, after checking its size and sha256 against the manifest (one read per file)."""
    for f in manifest.files:
        if not st.is_file(f.name):
            raise BankError(f"bank {st}: file {f.name} is missing; {REBUILD_HINT}")
        data = st.read_bytes(f.name)
        if len(data) != f.bytes:
            raise BankError(f"bank {st}: file {f.name} has {len(data)} bytes, the manifest says {f.bytes} (truncated "
                            f"or rewritten); {REBUILD_HINT}")
        if hashlib.sha256(data).hexdigest() != f.sha256:
            raise BankError(f"bank {st}: file {f.name} does not match its sha256 in the manifest; {REBUILD_HINT}")
        yield f, data


def read_manifest(path: str | os.PathLike | Storage) -> Manifest:
    """The bank's manifest after checking its own consistency (layout version, counts, content hash); the files
    themselves are checked by :func:`verify_bank` / while loading."""
    st = open_storage(path)
    if not st.exists():
        raise BankError(f"bank {st} does not exist; build it with `dia-ray bank build`")
    if not st.is_file(MANIFEST):
        raise BankError(f"bank {st}: no {MANIFEST} (incomplete or not a bank); {REBUILD_HINT}")
    try:
        manifest = Manifest.model_validate_json(st.read_text(MANIFEST))
    except (ValidationError, ValueError, StorageError) as err:
        first = str(err).splitlines()[0]
        raise BankError(f"bank {st}: {MANIFEST} is unreadable ({first}); {REBUILD_HINT}") from None
    if manifest.bank_version != BANK_VERSION:
        raise BankError(f"bank {st} has layout version {manifest.bank_version}, this dia-ray reads "
                        f"{BANK_VERSION}; {REBUILD_HINT}")
    c = manifest.counts
    if sum(f.rows for f in manifest.files) != c.rows or c.rows != c.images * c.versions:
        raise BankError(f"bank {st}: the manifest's counts do not add up ({c.rows} rows for {c.images} images x "
                        f"{c.versions} versions); {REBUILD_HINT}")
    if _content_hash(manifest.files) != manifest.content_hash:
        raise BankError(f"bank {st}: the manifest's content hash does not match its file list; {REBUILD_HINT}")
    return manifest


def verify_bank(path: str | os.PathLike | Storage) -> Manifest:
    """The manifest of the bank at ``path`` (a folder or a URI) after checking that every listed file is there with
    its size and sha256 and the counts add up. Raises :class:`BankError` (one line, naming the file) otherwise."""
    st = open_storage(path)
    manifest = read_manifest(st)
    for _ in _verified_files(st, manifest):
        pass
    return manifest


def _table(data: bytes, columns: list[str]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data), columns=columns)


def _pixels(column: Any, shape: tuple[int, ...]) -> np.ndarray:
    """A Parquet tensor column (Ray's extension type, or its list storage when Ray's types are not registered)
    → (n, *shape) numpy."""
    parts = []
    for chunk in column.chunks:
        storage = chunk.storage if hasattr(chunk, "storage") else chunk
        parts.append(storage.flatten().to_numpy(zero_copy_only=False))
    flat = np.concatenate(parts) if parts else np.zeros(0, dtype=PIXEL_DTYPE)
    return flat.reshape(-1, *shape)


def load_bank_versions(path: str | os.PathLike, n_train: int, indices: Any = None):
    """The bank as a float16 tensor (n_train, K, 3, r, r), row i = training image i, for
    :class:`~dia_ray.algo.dissolve.BankDissolver`. Verifies the bank first.

    The bank covers the full normal train split. ``indices`` (positions in that split, e.g. a ``max_train_images``
    subsample) picks the rows of the images actually trained on: then ``len(indices)`` must be ``n_train``; without
    it the bank's image count must be ``n_train``."""
    import torch

    path = open_storage(path)
    manifest = read_manifest(path)
    m, k = manifest.counts.images, manifest.counts.versions
    shape = tuple(manifest.config["pixels"]["shape"])
    if indices is None:
        if m != n_train:
            raise BankError(f"bank {path} holds {m} images but training uses {n_train}; it was built for another "
                            "dataset, normal class or subset — build the bank for this data")
        sel = None
    else:
        sel = np.asarray(indices, dtype=np.int64).reshape(-1)
        if len(sel) != n_train:
            raise BankError(f"bank {path}: {len(sel)} indices given for {n_train} training images")
        bad = sel[(sel < 0) | (sel >= m)]
        if len(bad):
            raise BankError(f"bank {path} holds {m} images; index {int(bad[0])} is out of range (was it built "
                            "for the full train split of this dataset?)")
    out = np.zeros((m, k, *shape), dtype=PIXEL_DTYPE)
    seen = np.zeros((m, k), dtype=np.int32)
    for _, data in _verified_files(path, manifest):  # each file read once: checked, then parsed
        table = _table(data, ["image_id", "version", "pixels"])
        ids = table.column("image_id").to_numpy()
        vs = table.column("version").to_numpy()
        out[ids, vs] = _pixels(table.column("pixels"), shape)
        np.add.at(seen, (ids, vs), 1)
    if not (seen == 1).all():
        raise BankError(f"bank {path}: {(seen != 1).sum()} (image, version) cells are missing or duplicated; "
                        f"{REBUILD_HINT}")
    if sel is not None:
        out = out[sel]
    return torch.from_numpy(out)


def bank_info(path: str | os.PathLike) -> dict[str, Any]:
    """The verified manifest of the bank at ``path`` plus its path and size on disk (raises :class:`BankError`)."""
    st = open_storage(path)
    manifest = verify_bank(st)
    return {"path": st.uri, "size_bytes": sum(st.size(n) for n in st.list()), **manifest.model_dump(mode="json")}


# ---------------------------------------------------------------------------------------------------------------------
# dissolving: the same function for the actors and the local loop


def dissolve_rows(dissolver: Any, image_ids: np.ndarray, pixels_u8: np.ndarray, recipe: BankRecipe
                  ) -> dict[str, np.ndarray]:
    """The K bank rows of each image. image_ids: (B,) int; pixels_u8: (B, H, W, 3) uint8 (may be read-only).
    ``dissolver`` is a :class:`~dia_ray.algo.dissolve.DiffusionDissolver` (only ``.run`` is used); one UNet call
    of B images per version, each image with its own t."""
    import torch

    from dia_ray.algo.resolution import check_resolution, to_ddpm, to_float01

    ids = np.asarray(image_ids, dtype=np.int64)
    x = to_float01(torch.from_numpy(np.array(pixels_u8, dtype=np.uint8)))
    check_resolution(x.shape[-1], recipe.resolution)
    device = next(dissolver.unet.parameters()).device
    cols: dict[str, list[np.ndarray]] = {"image_id": [], "version": [], "t": [], "flip": [], "pixels": []}
    for v in range(recipe.versions):
        t, flip = version_draws(recipe.seed, ids, v, recipe.t_min, recipe.t_max)
        f = torch.from_numpy(flip).view(-1, 1, 1, 1)
        y = to_ddpm(torch.where(f, x.flip(-1), x), recipe.resolution).to(device)
        out = dissolver.run(y, torch.from_numpy(t).to(device))
        cols["image_id"].append(ids)
        cols["version"].append(np.full(len(ids), v, dtype=np.int32))
        cols["t"].append(t.astype(np.int32))
        cols["flip"].append(flip)
        cols["pixels"].append(out.to("cpu", torch.float16).numpy())
    return {name: np.concatenate(parts) for name, parts in cols.items()}


def _load_dissolver(recipe: BankRecipe, device: str):
    from dia_ray.algo.ddpm import load_ddpm
    from dia_ray.algo.dissolve import DiffusionDissolver

    from dia_ray.distributed.train_ddpm import local_ddpm

    unet, scheduler, _ = load_ddpm(local_ddpm(recipe.ddpm_path), use_ema=recipe.use_ema, device=device)
    return DiffusionDissolver(unet, scheduler.alphas_cumprod, (recipe.t_min, recipe.t_max), recipe.resolution,
                              recipe.input_range)


class DissolveActor:
    """The ``map_batches`` callable class: loads the DDPM once per actor, dissolves batches of images into rows."""

    def __init__(self, recipe: dict[str, Any], threads: int, use_gpu: bool):
        import ray
        import torch

        from dia_ray.distributed.runtime import worker_logging

        worker_logging()
        torch.set_num_threads(threads)
        device = "cuda" if use_gpu and torch.cuda.is_available() else "cpu"
        self.recipe = BankRecipe(**recipe)
        self.dissolver = _load_dissolver(self.recipe, device)
        self.actor = ray.get_runtime_context().get_actor_id() or f"pid-{os.getpid()}"
        self.images = 0

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        t0 = time.perf_counter()
        rows = dissolve_rows(self.dissolver, batch["image_id"], batch["pixels"], self.recipe)
        rows["actor"] = np.full(len(rows["image_id"]), self.actor)
        self.images += len(batch["image_id"])
        log.debug("actor %s: dissolved images %d..%d x %d versions in %.2f s (%d images so far)", self.actor[:8],
                  int(batch["image_id"].min()), int(batch["image_id"].max()), self.recipe.versions,
                  time.perf_counter() - t0, self.images)
        return rows


# ---------------------------------------------------------------------------------------------------------------------
# building


def _check_inputs(ddpm: Storage, recipe: BankRecipe, image_size: int) -> None:
    from dia_ray.algo.ddpm import DDPM_META
    from dia_ray.algo.resolution import check_resolution

    if ddpm.is_dir() and not ddpm.is_file(DDPM_META):
        raise BankError(f"--ddpm {ddpm}: not a dia-ray DDPM folder (no {DDPM_META})")
    if not ddpm.is_file(DDPM_META):
        raise BankError(f"--ddpm {ddpm}: no such DDPM folder")
    try:
        meta = json.loads(ddpm.read_text(DDPM_META))
    except ValueError as err:
        raise BankError(f"--ddpm {ddpm}: {DDPM_META} is not valid JSON ({err}); retrain it with `dia-ray ddpm "
                        "train --force`") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("config", {}), dict):
        raise BankError(f"--ddpm {ddpm}: {DDPM_META} is not a dia-ray DDPM description (expected a JSON object "
                        "with a 'config' object); retrain it with `dia-ray ddpm train --force`")
    cfg = meta.get("config", {})
    if cfg.get("resolution", recipe.resolution) != recipe.resolution:
        raise ConfigError(f"the DDPM {ddpm_path} was trained at resolution {cfg['resolution']}, the bank asks for "
                          f"{recipe.resolution}; pass --resolution {cfg['resolution']} or another DDPM")
    steps = int(cfg.get("num_train_timesteps", 1000))
    if not (0 <= recipe.t_min < recipe.t_max <= steps):
        raise ConfigError(f"t range must satisfy 0 <= t_min < t_max <= {steps}, got ({recipe.t_min}, {recipe.t_max})")
    if recipe.versions < 1:
        raise ConfigError(f"--versions must be >= 1, got {recipe.versions}")
    if recipe.input_range not in ("raw01", "pm1"):
        raise ConfigError(f"input range '{recipe.input_range}' unknown; use raw01 or pm1")
    try:
        check_resolution(image_size, recipe.resolution)
    except ValueError as err:
        raise ConfigError(str(err)) from None


@dataclass
class _Plan:
    key: str
    storage: Storage
    dest: str  # relative to the storage root: banks/<key>
    recipe: BankRecipe
    key_inputs: dict[str, Any]
    existing: BankInfo | None


def _plan(ref: DataRef, ddpm_path: str | os.PathLike, storage: str | os.PathLike | Storage,
          t_range: tuple[int, int], versions: int, resolution: int, seed: int, input_range: str, use_ema: bool,
          force: bool) -> _Plan:
    """Validate, compute the key, and find an existing valid bank — without Ray and without loading any image."""
    ddpm = Storage(ddpm_path)
    recipe = BankRecipe(ddpm.uri, int(t_range[0]), int(t_range[1]), int(versions), int(resolution), int(seed),
                        input_range, bool(use_ema))
    _check_inputs(ddpm, recipe, _data_identity(ref)["image_size"])
    root = open_storage(storage, writable=True)
    inputs = _key_inputs(ddpm_fingerprint(ddpm.uri, use_ema), ref, recipe)
    key = _key(ref, recipe, inputs)
    dest = f"banks/{key}"
    existing = None
    if root.exists(dest) and not force:
        try:
            existing = BankInfo(root.join(dest), key, verify_bank(root.child(dest)), built=False)
            log.info("bank exists (%s), reusing %s — use --force to rebuild", key, root.join(dest))
        except BankError as err:
            log.warning("%s — building it again", err)
    return _Plan(key, root, dest, recipe, inputs, existing)


def _staging(plan: _Plan) -> str:
    """Where the builder writes (relative to the storage root). Local roots: a staging folder beside the bank,
    renamed into place when complete. Object stores (no rename): the bank's own prefix, emptied first; the
    manifest, written last, is the commit — without it the folder is not a bank."""
    if plan.storage.local:
        return f"banks/.{plan.key}.tmp-{uuid.uuid4().hex[:8]}"
    plan.storage.delete(plan.dest)
    return plan.dest


def _publish(plan: _Plan, staging: str) -> str:
    if staging != plan.dest:
        st = plan.storage
        if st.exists(plan.dest):
            st.delete(plan.dest)
        os.replace(st.local_path(staging), st.local_path(plan.dest))
    return plan.storage.join(plan.dest)


def _content_hash(files: list[BankFile]) -> str:
    blob = "\n".join(f"{f.name} {f.sha256}" for f in sorted(files, key=lambda f: f.name))
    return hashlib.sha256(blob.encode()).hexdigest()


def _stack_versions() -> dict[str, str]:
    import pyarrow
    import torch

    import dia_ray

    out = {"dia_ray": dia_ray.__version__, "torch": torch.__version__, "pyarrow": pyarrow.__version__,
           "python": platform.python_version()}
    try:
        import ray

        out["ray"] = ray.__version__
    except ImportError:
        pass
    return out


def _finish(plan: _Plan, staging: str, ref: DataRef, images: np.ndarray, seconds: float,
            build: dict[str, Any]) -> BankInfo:
    """Check the rows the builder wrote, write the manifest (last: the commit), publish."""
    m, k = len(images), plan.recipe.versions
    st = plan.storage.child(staging)
    names = st.list(suffix=".parquet", recursive=False)
    files, actors = [], set()
    seen = np.zeros((m, k), dtype=np.int32)
    for name in names:
        data = st.read_bytes(name)
        table = _table(data, ["image_id", "version", "actor"])
        np.add.at(seen, (table.column("image_id").to_numpy(), table.column("version").to_numpy()), 1)
        actors.update(table.column("actor").unique().to_pylist())
        files.append(BankFile(name=name, bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                              rows=table.num_rows))
    if not (seen == 1).all():
        raise BankError(f"bank {plan.key}: the builder wrote {int(seen.sum())} rows for {m * k} (image, version) "
                        f"cells ({int((seen == 0).sum())} missing); nothing was published")
    r = plan.recipe.resolution
    config = {**plan.key_inputs, "ddpm_path": plan.recipe.ddpm_path, "data_root": ref.data_root,
              "images_sha256": hashlib.sha256(np.ascontiguousarray(images).tobytes()).hexdigest(),
              "pixels": {"dtype": PIXEL_DTYPE, "shape": [3, r, r], "column": "ray.data tensor (ArrowTensorTypeV2)",
                         "range": "[-1, 1]" if plan.recipe.input_range == "raw01" else "[0, 1]"}}
    build = {**build, "seconds": round(seconds, 3), "rows_per_s": round(m * k / seconds, 2) if seconds else None,
             "images_per_s": round(m / seconds, 2) if seconds else None, "actors_used": sorted(actors),
             "created": datetime.now(timezone.utc).isoformat(timespec="seconds"), "versions": _stack_versions()}
    manifest = Manifest(bank_version=BANK_VERSION, key=plan.key, config=config,
                        counts=BankCounts(images=m, versions=k, rows=m * k), files=files,
                        content_hash=_content_hash(files), build=build)
    st.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2), MANIFEST)
    path = _publish(plan, staging)
    log.info("bank %s: %d images x %d versions = %d rows in %.1f s (%.1f rows/s), %d file(s) → %s", plan.key, m, k,
             m * k, seconds, m * k / max(seconds, 1e-9), len(files), path)
    return BankInfo(path, plan.key, manifest, built=True)


def _check_cluster(actors: int, num_cpus: float, num_gpus: float) -> None:
    import ray

    res = ray.cluster_resources()
    if num_gpus > 0 and res.get("GPU", 0) + 1e-9 < actors * num_gpus:
        raise ClusterError(f"{actors} actor(s) x {num_gpus:g} GPU need {actors * num_gpus:g} GPUs but the cluster has "
                           f"{res.get('GPU', 0):g}; use fewer --actors or no GPUs")
    if res.get("CPU", 0) + 1e-9 < actors * num_cpus:
        raise ClusterError(f"{actors} actor(s) x {num_cpus:g} CPU need {actors * num_cpus:g} CPUs but the cluster has "
                           f"{res.get('CPU', 0):g}; use fewer --actors or a smaller CPU share per actor")


def build_bank(
    ref: DataRef,
    ddpm_path: str | os.PathLike,
    storage: str | os.PathLike,
    *,
    t_range: tuple[int, int],
    versions: int = 8,
    resolution: int = 32,
    seed: int = 0,
    input_range: InputRange = "raw01",
    use_ema: bool = False,
    actors: int = 2,
    batch_size: int = 64,
    num_cpus_per_actor: float = 0.5,
    num_gpus_per_actor: float = 0.0,
    force: bool = False,
    address: str | None = None,
    progress: bool | None = None,
) -> BankInfo:
    """Build (or reuse) the bank of ``ref``'s normal train split with a Ray Data actor pool.

    ``actors`` actors each hold the DDPM (``num_cpus_per_actor`` CPUs — ≥ 1 CPU left to Ray Data's own tasks is
    advisable on small machines — and a fractional ``num_gpus_per_actor`` to pack several UNets per GPU) and
    dissolve ``batch_size`` images per call. An existing valid bank is returned as is (``built=False``; nothing is
    loaded and Ray is not touched) unless ``force``. Ray is started (``address=None``) or joined when not yet
    initialised. ``progress`` switches Ray Data's progress bars on/off (None: leave as configured)."""
    if actors < 1 or batch_size < 1 or num_cpus_per_actor < 0 or num_gpus_per_actor < 0:
        raise ConfigError("need --actors >= 1, --batch-size >= 1 and non-negative CPU/GPU shares per actor")
    plan = _plan(ref, ddpm_path, storage, t_range, versions, resolution, seed, input_range, use_ema, force)
    if plan.existing is not None:
        return plan.existing

    import ray.data

    from dia_ray.distributed.runtime import connect

    connect(address)
    _check_cluster(actors, num_cpus_per_actor, num_gpus_per_actor)
    ctx = ray.data.DataContext.get_current()
    bars = ctx.enable_progress_bars
    if progress is not None:
        ctx.enable_progress_bars = progress
    images = ref.load().train.images
    m = len(images)
    log.info("building bank %s: %d images x %d versions, t in [%d, %d), r=%d, %d actor(s) x %g CPU / %g GPU, "
             "batch %d", plan.key, m, versions, *t_range, resolution, actors, num_cpus_per_actor,
             num_gpus_per_actor, batch_size)
    staging = _staging(plan)
    t0 = time.perf_counter()
    try:
        ds = ray.data.from_items([{"image_id": i, "pixels": images[i]} for i in range(m)],
                                 override_num_blocks=max(1, math.ceil(m / batch_size)))
        gpu = {"num_gpus": num_gpus_per_actor} if num_gpus_per_actor > 0 else {}
        out = ds.map_batches(
            DissolveActor,
            fn_constructor_kwargs={"recipe": asdict(plan.recipe), "threads": max(1, int(num_cpus_per_actor)),
                                   "use_gpu": num_gpus_per_actor > 0},
            compute=ray.data.ActorPoolStrategy(size=actors),
            batch_size=batch_size,
            num_cpus=num_cpus_per_actor,
            **gpu,
        )
        with watch(lambda: parquet_rows(plan.storage.path(staging), plan.storage.fs) // versions,
                   Progress("bank", m, unit="images", announce=True)):
            out.write_parquet(plan.storage.join(staging))
        seconds = time.perf_counter() - t0
        return _finish(plan, staging, ref, images, seconds,
                       {"engine": "ray-data", "actors": actors, "batch_size": batch_size,
                        "num_cpus_per_actor": num_cpus_per_actor, "num_gpus_per_actor": num_gpus_per_actor})
    finally:
        ctx.enable_progress_bars = bars
        if staging != plan.dest:
            plan.storage.delete(staging)


def build_bank_local(
    ref: DataRef,
    ddpm_path: str | os.PathLike,
    storage: str | os.PathLike,
    *,
    t_range: tuple[int, int],
    versions: int = 8,
    resolution: int = 32,
    seed: int = 0,
    input_range: InputRange = "raw01",
    use_ema: bool = False,
    batch_size: int = 64,
    device: str = "cpu",
    force: bool = False,
) -> BankInfo:
    """The same bank (same key, rows, layout and manifest) from a plain single-process batched loop, no Ray: the
    baseline of ``benchmarks/bank_vs_online.py`` and the reference the actor-pool build is tested against. Uses
    torch's current thread count."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray  # the column type only; no Ray runtime is started

    if batch_size < 1:
        raise ConfigError("--batch-size must be >= 1")
    plan = _plan(ref, ddpm_path, storage, t_range, versions, resolution, seed, input_range, use_ema, force)
    if plan.existing is not None:
        return plan.existing
    images = ref.load().train.images
    staging = _staging(plan)
    t0 = time.perf_counter()
    try:
        dissolver = _load_dissolver(plan.recipe, device)
        for part, start in enumerate(range(0, len(images), batch_size)):
            ids = np.arange(start, min(start + batch_size, len(images)))
            rows = dissolve_rows(dissolver, ids, images[ids], plan.recipe)
            table = pa.table({**{c: rows[c] for c in ("image_id", "version", "t", "flip")},
                              "pixels": ArrowTensorArray.from_numpy(rows["pixels"]),
                              "actor": pa.array(["local"] * len(ids) * versions)})
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            plan.storage.write_bytes(sink.getvalue().to_pybytes(), staging, f"part-{part:05d}.parquet")
        seconds = time.perf_counter() - t0
        return _finish(plan, staging, ref, images, seconds,
                       {"engine": "local", "batch_size": batch_size, "device": device})
    finally:
        if staging != plan.dest:
            plan.storage.delete(staging)
