"""The datasets dia-ray knows: the paper's six, the two synthetic fine-grained ones, and the user's own ``folder``.

A :class:`DatasetSpec` says how a dataset is laid out on disk and how the paper uses it (ALGORITHM.md §6):
which classes are normal (train uses only those; test uses all, normal = positive label), the image size the
contrastive learner sees, the default dissolving step range and how a not-pre-split folder is split.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

from dia_ray.errors import DataError

Layout = Literal["medmnist", "folder"]


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    title: str  # the paper's column name (leaderboards)
    layout: Layout
    # medmnist: the medmnist flag, files `<flag>.npz` / `<flag>_<size>.npz` in the data root.
    # folder: the directory under the data root holding `{train,test}/<class>/` (or `<class>/` when not pre-split).
    location: str
    normal_classes: tuple[str, ...]  # medmnist: label indices as strings; folder: class-folder names
    classes: tuple[str, ...] = ()  # the classes the paper uses ("" = whatever is on disk)
    channels: int = 3  # native channels (grey images are replicated to RGB for the learner)
    native_size: int = 28
    image_size: int = 28  # what the contrastive learner sees (MedMNIST 28, folders 224)
    t_range: tuple[int, int] = (30, 130)  # dissolving step range, paper Table 2 best row
    test_fraction: float = 0.3  # folders that are not pre-split: stratified split
    split_seed: int = 0
    synthetic: bool = False
    paper: bool = True  # part of the paper's Table 1
    notes: str = ""
    class_aliases: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def is_medmnist(self) -> bool:
        return self.layout == "medmnist"


_SPECS: tuple[DatasetSpec, ...] = (
    DatasetSpec(
        "pneumoniamnist", "Pneumonia", "medmnist", "pneumoniamnist", ("0",), ("0", "1"),
        channels=1, native_size=28, image_size=28,
        notes="MedMNIST v2 official splits; 0 = normal, 1 = pneumonia; val unused.",
    ),
    DatasetSpec(
        "breastmnist", "Breast", "medmnist", "breastmnist", ("1",), ("0", "1"),
        channels=1, native_size=28, image_size=28,
        notes="MedMNIST v2; paper semantics: normal = label 1 (normal + benign), anomaly = 0 (malignant). "
        "The reference code literally trained on 0: pass --normal-class 0 to reproduce that.",
    ),
    DatasetSpec(
        "covid", "SARS-COV-2", "folder", "covid", ("non-COVID",), ("COVID", "non-COVID"),
        channels=3, native_size=224, image_size=224,
        notes="SARS-COV-2 CT slices; not pre-split upstream: stratified 7:3 with split_seed.",
    ),
    DatasetSpec(
        "kvasir", "Kvasir", "folder", "kvasir-anomaly-polyps", ("normal",), ("normal", "polyps"),
        channels=3, native_size=224, image_size=224, t_range=(130, 230),
        notes="Kvasir-v2 remapped polyp vs non-polyp: class folders `normal` and `polyps` (the raw 8 Kvasir-v2 "
        "folders are accepted too: `polyps` and `dyed-lifted-polyps` are anomalies, every other folder normal); "
        "7:3 split when not pre-split.",
    ),
    DatasetSpec(
        "retina", "Retinal-OCT", "folder", "OCT2017", ("NORMAL",), ("CNV", "DME", "DRUSEN", "NORMAL"),
        channels=3, native_size=224, image_size=224,
        notes="Kermany OCT2017 official train/test; NORMAL normal, CNV/DME/DRUSEN anomalous.",
    ),
    DatasetSpec(
        "aptos", "APTOS", "folder", "APTOS2019/split", ("0",), ("0", "1", "2", "3", "4"),
        channels=3, native_size=224, image_size=224,
        notes="APTOS-2019 grades 0-4 (folder per grade, or `0`/`1` binary): grade 0 normal, 1-4 diabetic "
        "retinopathy; 7:3 stratified split when not pre-split.",
    ),
    DatasetSpec(
        "synthetic", "Synthetic (npz)", "medmnist", "synthetic", ("0",), ("0", "1"),
        channels=1, native_size=28, image_size=28, synthetic=True, paper=False,
        notes="Generated fine-grained dataset in MedMNIST's npz layout (`synthetic.npz`); 0 = normal.",
    ),
    DatasetSpec(
        "synthetic-folder", "Synthetic (folders)", "folder", "synthetic-folder", ("normal",), ("anomaly", "normal"),
        channels=3, native_size=64, image_size=64, synthetic=True, paper=False,
        notes="Generated fine-grained dataset in the image-folder layout, RGB 64 px, pre-split train/test.",
    ),
)

REGISTRY: dict[str, DatasetSpec] = {s.name: s for s in _SPECS}
PAPER_DATASETS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.paper)
SYNTHETIC_DATASETS: tuple[str, ...] = tuple(s.name for s in _SPECS if s.synthetic)
FOLDER = "folder"  # the user's own data: DIR/{train,test}/<class>/, normal class from --normal-class
MIN_IMAGE_SIZE = 8  # px; below, ResNet-18's stem leaves nothing to learn from


def known_names() -> tuple[str, ...]:
    return (*REGISTRY, FOLDER)


def get_spec(name: str, *, normal_class: str | None = None, image_size: int | None = None,
             location: str | None = None) -> DatasetSpec:
    """The spec for ``name``; ``normal_class``/``image_size`` override the paper's choice (recorded in results).

    ``folder`` is the generic dataset for the user's own images: its data root *is* the folder holding
    ``train/`` and ``test/``, and ``normal_class`` is required.
    """
    if image_size is not None and image_size < MIN_IMAGE_SIZE:
        raise DataError(f"--image-size {image_size} is too small; images are at least {MIN_IMAGE_SIZE} px")
    if normal_class is not None and not [c for c in normal_class.split(",") if c.strip()]:
        raise DataError(f"--normal-class '{normal_class}' names no class; give one or more class names, "
                        "comma-separated (see `dia-ray data check`)")
    if name == FOLDER:
        if not normal_class:
            raise DataError("dataset 'folder' needs --normal-class NAME (the class folder holding normal images)")
        spec = DatasetSpec(FOLDER, "Folder", "folder", location or ".", (normal_class,), (),
                           native_size=0, image_size=image_size or 224, paper=False,
                           notes="User data: DIR/{train,test}/<class>/ images; train uses only the normal class.")
        return spec
    if name not in REGISTRY:
        raise DataError(f"dataset '{name}' unknown; known: {', '.join(known_names())}")
    spec = REGISTRY[name]
    changes: dict = {}
    if normal_class is not None:
        changes["normal_classes"] = tuple(c.strip() for c in normal_class.split(",") if c.strip())
    if image_size is not None:
        changes["image_size"] = int(image_size)
    if location is not None:
        changes["location"] = location
    return replace(spec, **changes) if changes else spec
