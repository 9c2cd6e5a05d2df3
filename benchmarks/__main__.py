"""``python -m benchmarks`` (from the repository root): every speed ratio of issue 13, measured side by side in this
one process, written to ``benchmarks/results.json`` and printed as a table. See benchmarks/README.md.

    .venv/bin/python -m benchmarks                    # the reference configuration (~13 min on an idle 2-core box)
    .venv/bin/python -m benchmarks --tiny --out r.json  # every code path in a minute (tiny sizes, numbers meaningless)
    .venv/bin/python -m benchmarks --parts step,eval --unet '{"block_out_channels": [64, 128, 256, 512]}'
    .venv/bin/python -m benchmarks --clock cpu --threads 1  # on a shared machine: CPU seconds of one thread
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from benchmarks.config import PARTS, TINY, BenchConfig

DEFAULT_OUT = Path(__file__).resolve().parent / "results.json"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON result file (default {DEFAULT_OUT})")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: checks the code paths, not the speed")
    p.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    p.add_argument("--unet", default=None, help="dia-ray's DDPM UNet as JSON UNetConfig overrides (default: none, "
                                                "the 36.25 M port of lucidrains' Unet)")
    p.add_argument("--reference-unet", choices=("lucidrains", "same"), default=None,
                   help="the baseline's dissolving UNet: lucidrains' Unet (default) or the same as dia-ray's")
    p.add_argument("--rounds", type=int, default=None, help="interleaved timed rounds per comparison")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what ratios use: wall seconds (a quiet machine) or CPU seconds (a shared one; use --threads 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads here and in the Train worker")
    p.add_argument("--workdir", type=Path, default=None, help="data, DDPMs and banks (default: a temp dir)")
    return p.parse_args(argv)


def config_from(args: argparse.Namespace) -> BenchConfig:
    bc = TINY if args.tiny else BenchConfig()
    changes: dict = {"parts": tuple(p.strip() for p in args.parts.split(",") if p.strip()), "clock": args.clock,
                     "threads": args.threads}
    if args.unet:
        changes["unet"] = json.loads(args.unet)
    if args.reference_unet:
        changes["reference_unet"] = args.reference_unet
    if args.rounds:
        changes["rounds"] = args.rounds
    return bc.replace(**changes)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # only the loopback cluster the Ray part starts itself
    args = parse_args(argv)
    try:
        bc = config_from(args)
        if "ddpm" in bc.parts or bc.reference_unet == "lucidrains" and "step" in bc.parts:
            from benchmarks.lucidrains import import_lucidrains

            import_lucidrains()
    except (ValueError, ImportError) as err:  # pydantic's ValidationError and json's errors are ValueErrors
        print(f"benchmarks: {str(err).splitlines()[0]}", file=sys.stderr)
        return 2
    from benchmarks.run import run, write

    results = run(bc, args.workdir, args.out)
    write(results, args.out)
    from benchmarks.report import table

    print(table(results))
    print(f"\nwritten: {args.out} ({results['wall_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
