"""Errors a user can cause. The CLI prints ``str(err)`` as one line on stderr and exits with code 2."""


class DiaRayError(Exception):
    """Base class: a problem with the user's input, data, storage or cluster (not a bug in dia-ray)."""

    exit_code = 2


class ConfigError(DiaRayError):
    """A config value, CLI option or sweep file is invalid."""


class DataError(DiaRayError):
    """A dataset is unknown, missing, or malformed on disk."""


class StorageError(DiaRayError):
    """A storage path cannot be used (not writable, node-local on a multi-node cluster, ...)."""


class CheckpointError(DiaRayError):
    """A checkpoint or saved model is missing, corrupt or from an incompatible config."""


class BankError(DiaRayError):
    """A dissolved bank is missing, incomplete or does not match its manifest."""


class ClusterError(DiaRayError):
    """A Ray cluster cannot be reached or cannot provide the requested resources."""


class NodeLostError(ClusterError):
    """A Ray node or worker process died during the work (preemption, OOM kill, crash); rerunning resumes."""
