"""Experiment trackers the users already have: MLflow (``--mlflow-uri`` or ``MLFLOW_TRACKING_URI``) and Weights &
Biases (``--wandb-project``; ``WANDB_MODE=offline`` works without network). Sweeps log through Ray Tune's logger
callbacks (one MLflow experiment per sweep, one run per trial, the dataset as a tag; W&B: one group per dataset);
a single ``dia-ray train`` logs from its rank-0 worker (:class:`RunTracker`), one run per training run, resumed
with the run when it restarts. Both are optional extras (``pip install 'dia-ray[mlflow]'`` / ``'dia-ray[wandb]'``).
"""

from __future__ import annotations

import os
from typing import Any

from dia_ray.errors import ConfigError


def check_trackers(mlflow_uri: str | None, wandb_project: str | None) -> dict[str, Any]:
    """The tracker settings to pass on (``MLFLOW_TRACKING_URI`` counts as ``--mlflow-uri``); one line if a package
    is missing."""
    mlflow_uri = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI") or None
    if mlflow_uri:
        try:
            import mlflow  # noqa: F401
        except ImportError:
            raise ConfigError("--mlflow-uri needs the mlflow package: pip install 'dia-ray[mlflow]'") from None
    if wandb_project:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ConfigError("--wandb-project needs the wandb package: pip install 'dia-ray[wandb]'") from None
    return {"mlflow_uri": mlflow_uri, "wandb_project": wandb_project}


def _file_store(uri: str) -> None:
    """MLflow 3 refuses its file store (``file:…``, a plain path) unless asked: a user who names one asked for it."""
    if uri.startswith("file:") or "://" not in uri:
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"


def tune_callbacks(sweep: str, dataset: str, mlflow_uri: str | None = None, wandb_project: str | None = None) -> list:
    """Tune logger callbacks for one dataset's study of sweep ``sweep``."""
    out: list = []
    if mlflow_uri:
        _file_store(mlflow_uri)
        from ray.air.integrations.mlflow import MLflowLoggerCallback

        out.append(MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=sweep,
                                        tags={"dataset": dataset, "sweep": sweep}, save_artifact=False))
    if wandb_project:
        out.append(_wandb_callback()(project=wandb_project, group=f"{sweep}/{dataset}", tags=[dataset, sweep],
                                     log_config=True))
    return out


def _wandb_callback():
    """Ray's ``WandbLoggerCallback``, except that a trial whose logging actor has already finished (Ray collects
    finished actors whenever any trial ends) does not fail with a ``KeyError`` at its own end (seen with Ray 2.60:
    the finished trial is marked errored and retried)."""
    from ray.air.integrations.wandb import WandbLoggerCallback

    class Wandb(WandbLoggerCallback):
        def log_trial_end(self, trial, failed: bool = False):
            if trial in self._trial_queues:
                super().log_trial_end(trial, failed=failed)
            else:
                self._cleanup_logging_actors()

    return Wandb


class RunTracker:
    """Per-epoch logging of one training run from its rank-0 worker. ``ids`` (kept in the run's checkpoint)
    resume the same tracker runs after a restart instead of starting new ones."""

    def __init__(self, name: str, params: dict[str, Any], mlflow_uri: str | None, wandb_project: str | None,
                 ids: dict[str, str] | None = None, experiment: str = "dia-ray-train"):
        self.ids = dict(ids or {})
        self._mlflow = self._wandb = None
        if mlflow_uri:
            import mlflow

            _file_store(mlflow_uri)
            mlflow.set_tracking_uri(mlflow_uri)
            mlflow.set_experiment(experiment)
            run = mlflow.start_run(run_id=self.ids.get("mlflow"), run_name=None if "mlflow" in self.ids else name)
            if "mlflow" not in self.ids:
                mlflow.log_params({k: str(v)[:500] for k, v in params.items()})
            self.ids["mlflow"] = run.info.run_id
            self._mlflow = mlflow
        if wandb_project:
            import wandb

            run = wandb.init(project=wandb_project, name=name, id=self.ids.get("wandb"), resume="allow",
                             config=params, reinit=True)
            self.ids["wandb"] = run.id
            self._wandb = run

    def log(self, metrics: dict[str, Any], step: int) -> None:
        numeric = {k: float(v) for k, v in metrics.items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool) and v == v}
        if self._mlflow is not None:
            self._mlflow.log_metrics(numeric, step=step)
        if self._wandb is not None:
            self._wandb.log(numeric, step=step)

    def close(self) -> None:
        if self._mlflow is not None:
            self._mlflow.end_run()
        if self._wandb is not None:
            self._wandb.finish()
