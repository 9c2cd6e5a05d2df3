"""The DIA algorithm core, pure PyTorch (+ kornia): shifts, SimCLR augmentation, backbone, optimiser, losses, scores.

Nothing here imports Ray; the distributed harness lives in ``dia_ray.distributed`` (ALGORITHM.md §4, §5)."""
