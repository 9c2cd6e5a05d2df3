"""The sweep file format: validation errors are one line naming the problem, before anything runs."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dia_ray.errors import ConfigError
from dia_ray.sweepfile import load_sweep

REPO = Path(__file__).resolve().parents[2]
GOOD = """
name: t
datasets: [synthetic]
methods: [blur-gaussian]
budget: tiny
space:
  dissolve.kernel_size: {choices: [3, 7, 11]}
sampler: grid
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "s.yaml"
    p.write_text(textwrap.dedent(text))
    return p


def test_grid_is_the_cartesian_product_of_choices(tmp_path):
    s = load_sweep(write(tmp_path, GOOD + "seeds: [0, 1]\n"))
    assert s.trials() == 3
    assert [g["dissolve.kernel_size"] for g in s.grid()] == [3, 7, 11]
    cfg = s.train_config("synthetic", {"dissolve.kernel_size": 11}, seed=1)
    assert cfg.dissolve.kernel_size == 11 and cfg.dissolve.kind == "gaussian" and cfg.seed == 1
    assert cfg.epochs == 2  # the tiny budget


def test_several_methods_become_a_method_dimension(tmp_path):
    s = load_sweep(write(tmp_path, """
        name: m
        datasets: [synthetic, synthetic-folder]
        methods: [dia, csi, blur-median]
        space:
          dissolve.t_range: {choices: [[30, 130], [130, 230]]}
        sampler: grid
    """))
    assert s.trials() == 6
    cfg = s.train_config("synthetic", {"method": "csi", "dissolve.t_range": [130, 230]}, 0)
    assert cfg.method == "csi" and (cfg.dissolve.t_min, cfg.dissolve.t_max) == (130, 230)


def test_numeric_ranges_with_step_make_a_grid(tmp_path):
    s = load_sweep(write(tmp_path, """
        name: r
        datasets: [synthetic]
        space:
          epochs: {low: 2, high: 6, step: 2}
        sampler: grid
    """))
    assert [g["epochs"] for g in s.grid()] == [2, 4, 6]


def test_all_sweep_files_in_the_repo_validate():
    files = sorted((REPO / "sweeps").glob("*.yaml"))
    assert {f.stem for f in files} >= {"table1_main", "step_range", "kernel_size", "resolution", "shift_type",
                                       "search_all", "smoke_cpu", "demo"}
    for f in files:
        s = load_sweep(f)
        assert s.trials() >= 2, f
        assert f.read_text().lstrip().startswith("#"), f"{f.name} must say which paper table it reproduces"


def test_paper_grids_have_the_paper_table_sizes():
    assert load_sweep(REPO / "sweeps/step_range.yaml").trials() == 5  # Table 2: five ranges
    assert load_sweep(REPO / "sweeps/kernel_size.yaml").trials() == 6  # Table 7: 2 blurs x k in {3,7,11}
    assert load_sweep(REPO / "sweeps/resolution.yaml").trials() == 9  # Table 5: 3 methods x 3 resolutions
    assert load_sweep(REPO / "sweeps/shift_type.yaml").trials() == 6  # Table 4: 3 methods x 2 shifts
    assert load_sweep(REPO / "sweeps/table1_main.yaml").trials() == 5  # Table 1 (+ blur baselines, DISYRE)


def test_a_sweep_without_a_space_is_one_configuration_per_method_run_once_per_seed(tmp_path):
    f = tmp_path / "one.yaml"
    f.write_text("name: x\ndatasets: [synthetic]\nmethods: [csi]\nseeds: [0, 1, 2]\n")
    sweep = load_sweep(f)
    assert sweep.trials() == 1 and sweep.runs() == 3 and sweep.grid() == [{"method": "csi"}]


@pytest.mark.parametrize(
    "text, needle",
    [
        ("name: x\ndatasets: [synthetic\n", "invalid YAML"),
        (GOOD + "bogus: 1\n", "unknown key 'bogus'"),
        (GOOD.replace("dissolve.kernel_size: {choices: [3, 7, 11]}", "dissolve.kernel_size: {choices: []}"),
         "choices is empty"),
        (GOOD + "resources: {gpus_per_worker: -1}\n", "gpus_per_worker must be 0"),
        (GOOD.replace("[synthetic]", "[mnist]"), "dataset 'mnist' is not in the registry"),
        (GOOD.replace("dissolve.kernel_size", "dissolve.kernel"), "unknown key 'dissolve.kernel'"),
        (GOOD.replace("[3, 7, 11]", "[3, 5]"), "kernel_size"),
        (GOOD + "resources: {workers: 0}\n", "resources.workers"),
        ("- a\n- b\n", "YAML mapping"),
    ],
)
def test_bad_sweep_files_fail_with_one_clear_message(tmp_path, text, needle):
    with pytest.raises(ConfigError) as err:
        load_sweep(write(tmp_path, text))
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


def test_cli_bad_sweep_exits_2_with_one_line_and_creates_nothing(tmp_path):
    bad = write(tmp_path, GOOD + "bogus: 1\n")
    out = subprocess.run([sys.executable, "-m", "dia_ray", "sweep", str(bad), "--storage", str(tmp_path / "st")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"dia-ray: error: {bad}: unknown key 'bogus'"]
    assert not (tmp_path / "st").exists()


def test_cli_dry_run_prints_grid_resources_and_cost(tmp_path):
    out = subprocess.run([sys.executable, "-m", "dia_ray", "sweep", str(REPO / "sweeps/step_range.yaml"),
                          "--storage", str(tmp_path / "st"), "--dry-run"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "5 configuration(s) x 3 seed(s) = 15 runs per dataset" in out.stdout
    assert "A100-hours (estimate" in out.stdout and "packing plan on 1x8xA100" in out.stdout
    assert not (tmp_path / "st").exists()


def test_cli_missing_dataset_in_data_root_is_refused_before_any_trial(tmp_path):
    f = write(tmp_path, GOOD.replace("[synthetic]", "[breastmnist]"))
    out = subprocess.run([sys.executable, "-m", "dia_ray", "sweep", str(f), "--storage", str(tmp_path / "st"),
                          "--data-root", str(tmp_path / "empty")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"{tmp_path / 'empty' / 'breastmnist.npz'} not found" in lines[0], out.stderr
    assert not (tmp_path / "st" / "sweeps").exists()


def test_cli_trial_bigger_than_the_machine_is_refused(tmp_path):
    f = write(tmp_path, GOOD + "resources: {workers: 4, cpus_per_worker: 8}\n")
    out = subprocess.run([sys.executable, "-m", "dia_ray", "sweep", str(f), "--storage", str(tmp_path / "st"),
                          "--data-root", str(tmp_path / "d")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "a trial needs 32 CPUs but this machine has" in lines[0], out.stderr
    assert not (tmp_path / "st" / "sweeps").exists()
