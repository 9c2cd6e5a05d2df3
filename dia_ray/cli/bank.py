"""``dia-ray bank build|info``: the precomputed dissolved bank (Ray Data actor pool → Parquet) and what is in one."""

from __future__ import annotations

import json
import logging
from typing import Optional

import typer

from dia_ray.cli import app
from dia_ray.cli.train import DATA_ROOT, DATASET, NORMAL
from dia_ray.errors import ConfigError

bank_app = typer.Typer(help="Stage [2]: precomputed dissolved images (dissolve.mode=bank).", no_args_is_help=True)
app.add_typer(bank_app, name="bank")

_ADDRESS = "Ray cluster to use (auto, ray://HOST:10001, HOST:6379). Default: a local Ray started for the run."


@bank_app.command("build")
def build_cmd(
    dataset: str = typer.Option(..., "--dataset", "-d", help=DATASET),
    storage: str = typer.Option(..., "--storage", help="Storage root, a folder or a URI (banks go to "
                                "STORAGE/banks/<key>/)."),
    data_root: Optional[str] = typer.Option(None, "--data-root", help=DATA_ROOT),
    ddpm: Optional[str] = typer.Option(None, "--ddpm", help="DDPM folder or URI; default: found in storage by its key "
                                       "(the budget's DDPM at --resolution), trained first when absent."),
    t_min: Optional[int] = typer.Option(None, "--t-min", help="Dissolving step range start (default: the dataset's, "
                                        "paper: 30; Kvasir 130)."),
    t_max: Optional[int] = typer.Option(None, "--t-max", help="Dissolving step range end, exclusive (paper: 130; "
                                        "Kvasir 230)."),
    versions: int = typer.Option(8, "--versions", "-k", min=1, help="Dissolved versions K per image."),
    resolution: int = typer.Option(32, "--resolution", help="DDPM resolution r (32 | 64 | 128)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the (t, flip) draw of every version."),
    input_range: str = typer.Option("raw01", "--input-range", help="raw01 (reference) | pm1."),
    use_ema: bool = typer.Option(False, "--use-ema", help="Dissolve with the EMA weights (reference: raw weights)."),
    actors: int = typer.Option(2, "--actors", min=1, help="Actors in the pool; each loads the DDPM once."),
    batch_size: int = typer.Option(64, "--batch-size", min=1, help="Images per actor call (one UNet call per "
                                   "version)."),
    cpus_per_actor: float = typer.Option(0.5, "--cpus-per-actor", min=0.01, help="CPUs reserved per actor."),
    gpus_per_actor: float = typer.Option(0.0, "--gpus-per-actor", min=0.0, help="GPU share per actor (e.g. 0.25 "
                                         "packs four UNets on one GPU); 0 = CPU."),
    normal_class: Optional[str] = typer.Option(None, "--normal-class", help=NORMAL),
    budget: Optional[str] = typer.Option(None, "--budget", help="Budget of the DDPM trained when --ddpm is omitted "
                                         "(paper | small | tiny)."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if a valid bank exists."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress lines while the bank is built."),
    address: Optional[str] = typer.Option(None, "--address", help=_ADDRESS),
) -> None:
    """Dissolve every normal training image K times with an actor pool and store the bank as Parquet."""
    from dia_ray.algo.resolution import check_resolution
    from dia_ray.config import DissolveConfig, parse
    from dia_ray.data.registry import get_spec
    from dia_ray.distributed import pipeline
    from dia_ray.distributed.bank import build_bank
    from dia_ray.distributed.train_ddpm import find_ddpm

    if quiet:
        logging.getLogger("dia_ray.progress").setLevel(logging.WARNING)
    if (t_min is None) != (t_max is None):
        raise ConfigError("--t-min and --t-max must be given together")
    spec = get_spec(dataset, normal_class=normal_class)
    t_range = (t_min, t_max) if t_min is not None else tuple(spec.t_range)
    parse(DissolveConfig, {"t_min": t_range[0], "t_max": t_range[1], "resolution": resolution,
                           "input_range": input_range, "bank_versions": versions}, "bank")
    try:
        check_resolution(spec.image_size, resolution)
    except ValueError as err:
        raise ConfigError(f"{err}; pass --resolution 32") from None
    cfg = pipeline.ddpm_config(dataset, budget, resolution=resolution)
    if ddpm is not None:
        ddpm = pipeline.check_ddpm_folder(ddpm, resolution)
    placement = pipeline.Placement(workers=1, address=address)
    root, per = pipeline.preflight(placement, storage)
    ref, loaded = pipeline.data_ref(dataset, data_root, normal_class)
    if ddpm is None:
        ddpm = find_ddpm(root, ref, cfg)
        if ddpm is None:  # train it first (needs the cluster); a found DDPM lets a reused bank skip Ray entirely
            pipeline.connect_and_check(placement, per, root)
            ddpm = pipeline.ensure_ddpm(ref.share(loaded), cfg, root, placement, per)
    info = build_bank(ref, ddpm, root, t_range=t_range, versions=versions, resolution=resolution, seed=seed,
                      input_range=input_range, use_ema=use_ema, actors=actors, batch_size=batch_size,
                      num_cpus_per_actor=cpus_per_actor, num_gpus_per_actor=gpus_per_actor, force=force,
                      address=address, progress=False)
    c = info.manifest.counts
    if not info.built:
        typer.echo(f"bank exists ({info.key}), reusing — use --force to rebuild")
    else:
        b = info.manifest.build
        typer.echo(f"built in {b['seconds']:.1f} s ({b['rows_per_s']:.1f} images·versions/s) by "
                   f"{len(b['actors_used'])} actor(s)")
    typer.echo(f"bank: {info.path}")
    typer.echo(f"{c.images} images x {c.versions} versions = {c.rows} rows in {len(info.manifest.files)} file(s)")


@bank_app.command("info")
def info_cmd(
    path: str = typer.Argument(..., help="A bank folder or URI (STORAGE/banks/<key>)."),
    as_json: bool = typer.Option(False, "--json", help="Print the verified manifest + size as one JSON object."),
) -> None:
    """Verify a bank (every file against its size and sha256) and print its manifest, counts and size on disk."""
    from dia_ray.distributed.bank import bank_info
    from dia_ray.errors import BankError
    from dia_ray.distributed.pipeline import existing_location

    info = bank_info(existing_location(path, "bank", BankError).uri)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    c, cfg, b = info["counts"], info["config"], info["build"]
    typer.echo(f"bank:      {info['path']}")
    typer.echo(f"key:       {info['key']}")
    typer.echo(f"counts:    {c['images']} images x {c['versions']} versions = {c['rows']} rows in "
               f"{len(info['files'])} file(s)")
    typer.echo(f"size:      {info['size_bytes'] / 2**20:.2f} MiB on disk")
    typer.echo(f"data:      {cfg['dataset']} (split {cfg['split']}, normal {','.join(cfg['normal_class'])}, "
               f"{cfg['image_size']} px) from {cfg['data_root']}")
    typer.echo(f"dissolve:  t in [{cfg['t_min']}, {cfg['t_max']}), r={cfg['resolution']}, seed {cfg['seed']}, "
               f"input {cfg['input_range']}, {'EMA' if cfg['use_ema'] else 'raw'} weights of {cfg['ddpm_path']}")
    typer.echo(f"pixels:    {cfg['pixels']['dtype']} {tuple(cfg['pixels']['shape'])}, range {cfg['pixels']['range']}")
    typer.echo(f"built:     {b['created']} by {b['engine']} in {b['seconds']:.1f} s ({b['rows_per_s']} rows/s), "
               f"{len(b['actors_used'])} actor(s)")
    typer.echo(f"content:   sha256 {info['content_hash']} (all files verified)")
    typer.echo("manifest:")
    typer.echo(json.dumps({k: v for k, v in info.items() if k not in ("path", "size_bytes")}, indent=2))
