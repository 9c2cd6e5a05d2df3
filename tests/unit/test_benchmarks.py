"""``python -m benchmarks`` at a tiny size: every non-Ray part runs through the real code and writes the documented
JSON; ratios are positive finite numbers; targets say met / missed / not measured. No timing is asserted (the Ray
part is tested in tests/integration/test_benchmarks_ray.py)."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from benchmarks.__main__ import main
from benchmarks.config import TINY
from benchmarks.report import TARGETS, table
from benchmarks.run import run, write

HAVE_LUCIDRAINS = importlib.util.find_spec("denoising_diffusion_pytorch") is not None


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    parts = ("step", "eval", "auroc", "disyre") + (("ddpm",) if HAVE_LUCIDRAINS else ())
    bc = TINY.replace(parts=parts, reference_unet="lucidrains" if HAVE_LUCIDRAINS else "same")
    out = run(bc, tmp_path_factory.mktemp("bench"))
    path = tmp_path_factory.mktemp("out") / "results.json"
    write(out, path)
    return json.loads(path.read_text())


def test_training_step_reports_every_variant_with_positive_finite_ratios(results):
    step = results["training_step"]
    expected = {"dia": {"baseline", "online", "bank", "online_bf16", "bank_bf16"},
                "csi": {"baseline", "ours", "ours_bf16"}, "blur": {"baseline", "ours", "ours_bf16"}}
    for method, variants in expected.items():
        assert set(step[method]) == variants
        for name, v in step[method].items():
            for key in ("images_per_s", "seconds_per_step", "gflop_per_step", "achieved_gflops",
                        "fraction_of_fp32_peak", "peak_rss_mb"):
                assert _positive(v[key]), (method, name, key, v[key])
            assert len(v["rounds_seconds"]) == TINY.rounds
            assert ("ratio_to_baseline" in v) == (name != "baseline")
            if name != "baseline":
                assert _positive(v["ratio_to_baseline"])
    # the baseline makes one UNet call per shift group, dia-ray one per step
    assert step["dia"]["baseline"]["unet_calls_per_step"] == 4
    assert step["dia"]["online"]["unet_calls_per_step"] == 1
    # the bank step skips the UNet: fewer FLOPs than the online step
    assert step["dia"]["bank"]["gflop_per_step"] < step["dia"]["online"]["gflop_per_step"]


def test_evaluation_and_auroc_parts_have_their_numbers(results):
    ev = results["evaluation"]
    assert ev["network_forwards_per_image"] == 4 * TINY.eval_samples
    for name in ("baseline", "ours", "ours_bf16"):
        assert _positive(ev[name]["seconds_per_1000_images"])
        assert 0.0 <= ev[name]["auroc_untrained_model"] <= 1.0
    assert _positive(ev["ours"]["speedup_over_baseline"]) and _positive(ev["ours_bf16"]["speedup_over_baseline"])
    au = results["auroc"]
    assert len(au["fp32"]["values"]) == len(au["bf16"]["values"]) == TINY.auroc_seeds
    diffs = [b - f for b, f in zip(au["bf16"]["values"], au["fp32"]["values"])]
    assert au["difference_bf16_minus_fp32"]["mean"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-4)


@pytest.mark.skipif(not HAVE_LUCIDRAINS, reason="denoising-diffusion-pytorch not installed (bash benchmarks/setup.sh)")
def test_ddpm_part_compares_against_lucidrains(results):
    dd = results["ddpm_training"]
    assert dd["lucidrains"]["images_per_s"] > 0 and _positive(dd["ours"]["ratio_to_lucidrains"])
    assert _positive(dd["ours_bf16"]["ratio_to_lucidrains"])
    assert dd["lucidrains"]["images_per_round"] == TINY.ddpm_batch


def test_targets_cover_every_target_and_say_why_when_missed(results):
    targets = {t["name"]: t for t in results["targets"]}
    assert set(targets) == {t.name for t in TARGETS}
    for t in targets.values():
        if t["met"] is None:
            assert t["value"] is None and "not run" in t["reason"]
        elif t["met"] is False:
            assert t["reason"].startswith("measured")
        else:
            assert "reason" not in t
    assert targets["ray_train_step_vs_plain_loop"]["met"] is None  # the Ray part was not run here
    assert targets["dia_online_fp32_vs_reference"]["value"] == results["training_step"]["dia"]["online"][
        "ratio_to_baseline"]


def test_machine_peak_and_table(results):
    assert _positive(results["peak"]["fp32_gflops"]) and _positive(results["peak"]["bf16_gflops"])
    assert results["machine"]["cores"] >= 1 and len(results["machine"]["loadavg_start"]) == 3
    text = table(results)
    assert text.startswith("| part |") and "dia training step | online_bf16" in text
    assert "CSI evaluation | ours_bf16" in text and "AUROC" in text


def test_cli_refuses_bad_input_with_one_line_and_exit_2(capsys):
    assert main(["--parts", "step,warp"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warp" in err[0]
    assert main(["--unet", '{"block_out_channels": "x"}', "--parts", "eval"]) == 2


def test_disyre_line_has_training_and_scoring_speed_beside_dia(results):
    dis = results["disyre"]
    for name in ("dia_online", "disyre_train", "disyre_score"):
        assert _positive(dis[name]["images_per_s"]) and _positive(dis[name]["peak_rss_mb"])
    for name in ("disyre_train", "disyre_score"):
        expected = dis[name]["images_per_s"] / dis["dia_online"]["images_per_s"]
        assert dis[name]["ratio_to_dia_online"] == pytest.approx(expected, rel=1e-2, abs=2e-3)
    assert dis["patch"] == 32 and dis["inference_steps"] == 4
    assert "DISYRE vs DIA | disyre_score" in table(results)
