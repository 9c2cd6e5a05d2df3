"""How a dataset reaches Ray workers: the driver reads it once and puts the arrays into the Ray object store; Train
workers, Data actors and Tune trials get them from there. So a cluster needs the data only where the driver runs
(the head node for `dia-ray submit`), or at a URI the driver can read (``--data-root s3://bucket/data``); worker
nodes need no copy, no shared data filesystem and no upload through the runtime env.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from dia_ray.storage import CACHE_ENV, Storage, is_uri


@dataclass(frozen=True)
class DataRef:
    """A dataset's identity (what DDPM and bank keys hash) plus, once :meth:`share` ran on the driver, the object
    store reference of its loaded arrays (a :class:`~dia_ray.data.LoadedDataset`)."""

    dataset: str
    data_root: str
    normal_class: str | None = None
    image_size: int | None = None
    arrays: Any = field(default=None, compare=False)  # ray.ObjectRef of the LoadedDataset, set by share()

    def load(self):
        """The dataset: from the object store when shared, else read from ``data_root`` (driver, local mode)."""
        if self.arrays is not None:
            import ray

            return ray.get(self.arrays)
        from dia_ray.data import load_dataset

        return load_dataset(self.dataset, self.data_root, normal_class=self.normal_class, image_size=self.image_size)

    def share(self, loaded: Any = None) -> "DataRef":
        """On the driver (Ray initialised): put the loaded dataset into the object store once."""
        import ray

        if self.arrays is not None:
            return self
        return replace(self, arrays=ray.put(loaded if loaded is not None else self.load()))

    def as_dict(self) -> dict[str, Any]:
        return {"dataset": self.dataset, "data_root": self.data_root, "normal_class": self.normal_class,
                "image_size": self.image_size, "arrays": self.arrays}


def local_data_root(data_root: str, dataset: str, normal_class: str | None = None) -> Path:
    """A local folder holding ``dataset`` under the layout of ``data_root``: the folder itself, or — for a URI —
    a node-local cached copy of just this dataset's file or folder (not the whole bucket)."""
    if not is_uri(data_root):
        return Path(data_root).expanduser().resolve()
    from dia_ray.data.loading import _spec, source_path

    st = Storage(data_root)
    spec = _spec(dataset, normal_class)
    rel = source_path(spec, Path(".")).as_posix().removeprefix("./")
    if rel in ("", "."):  # the generic `folder` dataset: the data root is the dataset folder
        return st.local_dir()
    cache = Path(os.environ.get(CACHE_ENV) or "~/.cache/dia-ray/storage").expanduser()
    root = cache / f"data-{hashlib.sha256(st.uri.encode()).hexdigest()[:16]}"
    if spec.is_medmnist:
        target = root / rel
        if not target.is_file() or target.stat().st_size != st.size(rel):
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
            tmp.write_bytes(st.read_bytes(rel))
            os.replace(tmp, target)
        return root
    folder = st.local_dir(rel)
    link = root / rel
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(folder, target_is_directory=True)
        except FileExistsError:
            pass
    return root
