"""``dia-ray data check``: load each dataset found under a data root and report what the learner will see."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from dia_ray.data.loading import ImageSplit, LoadedDataset, load_dataset, source_path
from dia_ray.data.registry import FOLDER, REGISTRY
from dia_ray.errors import DataError
from dia_ray.paths import existing_dir


def check_data(data_root, name: str | None = None, *, normal_class: str | None = None) -> list[dict]:
    """One report per dataset: ``name``, or (None) every registry dataset present under ``data_root`` — plus the
    generic ``folder`` dataset when the root itself holds ``train/`` and ``test/`` and ``normal_class`` is given.

    Each dataset is fully loaded (every image decoded), so the first problem raises its :class:`DataError`.
    Nothing is generated or downloaded.
    """
    root = Path(data_root).expanduser()
    if not root.exists():
        raise DataError(f"data root {root} does not exist; pass --data-root DIR or set DIA_RAY_DATA_ROOT")
    existing_dir(root, "data root", DataError)
    names = [name] if name else present_datasets(root, folder=normal_class is not None)
    if not names:
        looked = ", ".join(source_path(s, root).name + ("" if s.is_medmnist else "/") for s in REGISTRY.values())
        raise DataError(f"no dataset found under {root} (looked for: {looked}); run `dia-ray data prepare "
                        f"--dataset NAME --data-root {root}`")
    return [report(load_dataset(n, root, normal_class=normal_class, generate_missing=False)) for n in names]


def present_datasets(root: Path, *, folder: bool = False) -> list[str]:
    """Registry datasets whose file or folder exists under ``root`` (at their default image size)."""
    names = [n for n, spec in REGISTRY.items() if source_path(spec, root).exists()]
    if folder and (root / "train").is_dir() and (root / "test").is_dir():
        names.append(FOLDER)
    return names


def report(ds: LoadedDataset) -> dict:
    """Counts per split and class, image size and channels of a loaded dataset (JSON-able)."""
    grey = all(np.array_equal(s.images[..., 0], s.images[..., c]) for s in (ds.train, ds.test) for c in (1, 2))
    return {
        "dataset": ds.spec.name,
        "title": ds.spec.title,
        "source": str(ds.source),
        "layout": ds.spec.layout,
        "image_size": int(ds.test.images.shape[1]),
        "channels": int(ds.test.images.shape[-1]),
        "native_channels": 1 if grey else 3,
        "normal_classes": list(ds.spec.normal_classes),
        "split": ds.split_info,
        "train": _counts(ds.train),
        "test": _counts(ds.test),
    }


def _counts(split: ImageSplit) -> dict:
    return {
        "total": len(split),
        "normal": int((split.labels == 1).sum()),
        "anomaly": int((split.labels == 0).sum()),
        "classes": dict(sorted(Counter(split.classes.tolist()).items())),
    }
