"""``dia-ray data prepare|check``: put a dataset in place (generate / download) and see what the learner will get."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from dia_ray.cli import app

data_app = typer.Typer(help="Prepare and check datasets (MedMNIST npz files, image folders, synthetic).",
                       no_args_is_help=True)
app.add_typer(data_app, name="data")

_ROOT_HELP = "Data root (default: $DIA_RAY_DATA_ROOT or ~/.cache/dia-ray/data; for --dataset folder: DIR/{train,test})."


@data_app.command("prepare")
def prepare_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help="Dataset name (see `dia-ray data check --help`)."),
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=_ROOT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the synthetic generator."),
    online: bool = typer.Option(False, "--online", help="Allow downloading MedMNIST files (offline by default)."),
    force: bool = typer.Option(False, "--force", help="Regenerate / re-download even if present."),
    image_size: Optional[int] = typer.Option(None, "--image-size", help="MedMNIST+ size (64/128/224) to fetch."),
) -> None:
    """Generate a synthetic dataset, download a MedMNIST file (--online), or check a folder dataset's layout."""
    from dia_ray.data import default_data_root, prepare

    path = prepare(dataset, data_root or default_data_root(), seed=seed, online=online, force=force,
                   image_size=image_size)
    typer.echo(f"{dataset}: ready at {path}")


@data_app.command("check")
def check_cmd(
    data_root: Optional[Path] = typer.Option(None, "--data-root", help=_ROOT_HELP),
    dataset: Optional[str] = typer.Option(None, "--dataset", "-d", help="Check only this dataset (default: all "
                                          "found under the data root)."),
    normal_class: Optional[str] = typer.Option(None, "--normal-class", help="Override the normal class(es), "
                                               "comma-separated (required for --dataset folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the reports as JSON."),
) -> None:
    """Load every dataset found (decoding every image) and print its source, sizes and counts per split and class."""
    from dia_ray.data import check_data, default_data_root

    reports = check_data(data_root or default_data_root(), dataset, normal_class=normal_class)
    if as_json:
        typer.echo(json.dumps(reports, indent=2))
        return
    for rep in reports:
        typer.echo(format_report(rep))


def format_report(rep: dict) -> str:
    split = rep["split"]
    how = ("official train/test split" if split.get("presplit") else
           f"stratified split, test fraction {split['test_fraction']}, seed {split['seed']}")
    grey = "grey, replicated to RGB" if rep["native_channels"] == 1 else "RGB"
    lines = [
        f"{rep['dataset']} ({rep['title']})",
        f"  source:  {rep['source']}",
        f"  images:  {rep['image_size']}x{rep['image_size']}x{rep['channels']} uint8 ({grey})",
        f"  normal:  class {', '.join(rep['normal_classes'])}; {how}",
    ]
    for name in ("train", "test"):
        c = rep[name]
        classes = ", ".join(f"{k}={v}" for k, v in c["classes"].items())
        lines.append(f"  {name + ':':<8} {c['total']} images: {c['normal']} normal, {c['anomaly']} anomaly "
                     f"(classes {classes})")
    if split.get("train_excluded"):
        excluded = ", ".join(f"{k}={v}" for k, v in split["train_excluded"].items())
        lines.append(f"  not used for one-class training: {excluded}")
    return "\n".join(lines)
