"""Multi-node safety: a storage root every node can see, or the run is refused before any trial starts.

On a cluster with more than one node, trials run on worker nodes and write their checkpoints, banks and result
records under ``--storage``. A node-local path (ext4/xfs on the node's own disk) would scatter them over the nodes'
disks: resume and the leaderboard would silently miss most of them. So a local path is accepted on a multi-node
cluster only when it lives on a network filesystem (decided by the fstype of its longest mount prefix in
``/proc/mounts``); object-store URIs (``s3://``, ``gs://``, ...) are always fine.
"""

from __future__ import annotations

import os
from pathlib import Path

from dia_ray.errors import StorageError
from dia_ray.storage import Storage

# fstypes whose contents are the same from every node (network / cluster filesystems). `fuse.*` covers gcsfuse,
# s3fs, juicefs, sshfs, fuse.glusterfs, ... (FUSE mounts of remote stores); plain `fuseblk` is a local disk.
NETWORK_FSTYPES = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ceph", "lustre", "gpfs", "beegfs", "glusterfs", "ocfs2", "gfs2",
    "wekafs", "panfs", "orangefs", "afs", "9p",
})


def _unescape(field: str) -> str:
    """/proc/mounts writes space, tab, newline and backslash in paths as octal escapes (``\\040``)."""
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def parse_mounts(text: str) -> list[tuple[str, str]]:
    """``(mount point, fstype)`` for every line of a ``/proc/mounts`` text, in file order."""
    mounts = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            mounts.append((_unescape(parts[1]), parts[2]))
    return mounts


def mount_of(path: str, mounts: list[tuple[str, str]]) -> tuple[str, str]:
    """The ``(mount point, fstype)`` holding ``path``: the longest mount point that is a path prefix of it (the
    last one listed wins when a mount point is mounted over)."""
    target = Path(path)
    best = ("/", "unknown")
    best_len = -1
    for point, fstype in mounts:
        mp = Path(point)
        if (target == mp or mp in target.parents) and len(mp.parts) >= best_len:
            best, best_len = (point, fstype), len(mp.parts)
    return best


def is_network_fstype(fstype: str) -> bool:
    return fstype in NETWORK_FSTYPES or (fstype.startswith("fuse.") and fstype != "fuse.lxcfs")


def require_shared_storage(storage: Storage | str, nodes: int, mounts_text: str | None = None) -> None:
    """Refuse a node-local ``storage`` path when the cluster has (or can grow to) more than one node.

    ``mounts_text`` is the ``/proc/mounts`` content (read from this machine when None; a parameter for tests).
    """
    st = storage if isinstance(storage, Storage) else Storage(storage)
    if nodes <= 1 or not st.local:
        return
    if mounts_text is None:
        try:
            mounts_text = Path("/proc/mounts").read_text()
        except OSError:
            return  # not Linux: nothing to decide from; the sweep's own docs carry the rule
    point, fstype = mount_of(st.uri, parse_mounts(mounts_text))
    if is_network_fstype(fstype):
        return
    raise StorageError(
        f"storage '{st.uri}' is node-local ({fstype} mounted at {point}) but the cluster has {nodes} nodes: trials "
        "on other nodes would write to their own disks and resume/leaderboard would miss them; use an object store "
        "(s3://bucket/prefix, gs://…) or a shared filesystem mounted at the same path on every node "
        "(NFS/EFS/Filestore, e.g. /mnt/shared/dia-ray)")


def expected_node_count() -> int:
    """The most nodes this cluster may have during the run (:func:`~dia_ray.distributed.runtime.cluster_capacity`:
    the alive nodes, or more when an autoscaling cluster says how far it can grow)."""
    from dia_ray.distributed.runtime import cluster_capacity

    return cluster_capacity().nodes
