"""DISYRE (Naval Marimont et al., ISBI 2024 / MICCAI 2024; DISYRE.md): a restoration network trained on healthy
images to undo synthetic anomalies of graded severity ("cold diffusion"), scoring test images by how much a few
restorations change them. Pure PyTorch (+ diffusers, scipy); no Ray.

Modules: ``schedule`` (γ, severity → t, inference timesteps), ``shapes`` (anomaly masks), ``corruption`` (FPI,
DAG min–max matching and intensity bias, foreign-patch pool), ``augment`` (the code's augmentation), ``model``
(the UNet and the patch geometry), ``inference`` (anomaly maps, sliding windows, image scores), ``loops``
(``fit_disyre`` with the protocol of :func:`dia_ray.algo.loops.fit`).
"""

from dia_ray.algo.disyre.loops import DisyreState, evaluate, final_summary, fit_disyre, new_disyre_state

__all__ = ["DisyreState", "evaluate", "final_summary", "fit_disyre", "new_disyre_state"]
