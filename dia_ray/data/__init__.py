"""Datasets: the registry of the paper's six + synthetic + the user's ``folder``, readers for MedMNIST npz files and
image folders, a fine-grained synthetic generator, and one loader giving the one-class train / labelled test split.

>>> ds = load_dataset("breastmnist", "/data")      # train: normal (label 1) images only; test: all, 1 = normal
>>> ds.train.images.shape                          # (399, 28, 28, 3) uint8
"""

from dia_ray.data.check import check_data
from dia_ray.data.loading import (ImageSplit, LoadedDataset, ddpm_images, default_data_root, load_dataset,
                                  prepare)
from dia_ray.data.registry import (
    FOLDER,
    PAPER_DATASETS,
    REGISTRY,
    SYNTHETIC_DATASETS,
    DatasetSpec,
    get_spec,
    known_names,
)

__all__ = [
    "FOLDER",
    "PAPER_DATASETS",
    "REGISTRY",
    "SYNTHETIC_DATASETS",
    "DatasetSpec",
    "ImageSplit",
    "LoadedDataset",
    "check_data",
    "ddpm_images",
    "default_data_root",
    "get_spec",
    "known_names",
    "load_dataset",
    "prepare",
]
