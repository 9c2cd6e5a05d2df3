"""Every paper / reference default, pinned to the numbers of ALGORITHM.md §0, §2.3, §3, §4, §5, §11 (written out here,
not read from the code), so a changed default fails a test instead of silently changing what `--budget paper` runs."""

from __future__ import annotations

import pytest

from dia_ray.config import BUDGETS, DDPM_BATCH_BY_RESOLUTION, DDPMConfig, TrainConfig, budget_overrides
from dia_ray.data.registry import PAPER_DATASETS, get_spec
from dia_ray.distributed.train_dia import t_range_for


def test_contrastive_training_defaults():
    cfg = TrainConfig(dataset="pneumoniamnist")
    assert cfg.method == "dia" and cfg.backbone == "resnet18_imagenet" and cfg.shift == "rotation"
    assert cfg.batch_size == 32  # images per step → 3·4·32 = 384 views
    assert cfg.epochs == 200 and cfg.max_iters_per_epoch == 201
    assert cfg.temperature == 0.5 and cfg.loss_mode == "shifted_removed"
    assert cfg.crop_scale == (0.08, 1.0) and cfg.simclr_dim == 128
    assert cfg.max_train_images is None and cfg.max_test_images is None
    assert cfg.reference_rng is False  # fresh randomness every epoch unless asked


def test_lars_and_schedule_defaults_are_the_code_values_not_the_papers_0_001():
    o = TrainConfig(dataset="pneumoniamnist").optim
    assert (o.lr, o.momentum, o.weight_decay, o.trust_coef, o.eps) == (0.1, 0.9, 1e-6, 0.001, 1e-8)
    assert (o.warmup_epochs, o.warmup_multiplier, o.cosine_t_max) == (10.0, 10.0, 1000.0)


def test_evaluation_defaults():
    e = TrainConfig(dataset="pneumoniamnist").eval
    assert e.samples == 10 and e.crop_scale == (0.54, 1.0) and e.every == 1
    assert e.max_train_images is None  # the CSI weights use the whole normal training set


def test_dissolving_defaults():
    d = TrainConfig(dataset="pneumoniamnist").dissolve
    assert d.kind == "diffusion" and d.mode == "online" and d.input_range == "raw01"
    assert d.resolution == 32 and d.use_ema is False  # the reference dissolves with the raw (non-EMA) weights
    assert d.kernel_size == 7 and d.blur_all_branches is False and d.blur_resize_to_resolution is False
    assert d.t_min is None and d.t_max is None
    assert TrainConfig(dataset="pneumoniamnist").precision == "fp32"  # the whole step in fp32, dissolving included


@pytest.mark.parametrize("dataset", PAPER_DATASETS)
def test_dissolving_step_range_per_dataset(dataset):
    """Paper Table 2 best rows: t ~ U(30, 130) everywhere except Kvasir-Polyp, U(130, 230)."""
    expected = (130, 230) if dataset == "kvasir" else (30, 130)
    cfg = TrainConfig(dataset=dataset)
    assert t_range_for(cfg, get_spec(dataset).t_range) == expected


def test_an_explicit_step_range_overrides_the_dataset_default():
    cfg = TrainConfig(dataset="kvasir", dissolve={"t_min": 30, "t_max": 99})
    assert t_range_for(cfg, get_spec("kvasir").t_range) == (30, 99)


def test_ddpm_defaults():
    c = DDPMConfig()
    assert c.resolution == 32 and c.steps == 25_000 and c.lr == 8e-5 and c.adam_betas == (0.9, 0.99)
    assert c.grad_accum == 2 and c.clip_grad_norm == 1.0 and c.num_train_timesteps == 1000 and c.hflip
    assert (c.ema_decay, c.ema_update_every, c.ema_update_after) == (0.995, 10, 100)
    assert DDPM_BATCH_BY_RESOLUTION == {32: 256, 64: 128, 128: 32}
    assert [DDPMConfig(resolution=r).images_per_step for r in (32, 64, 128)] == [512, 256, 64]
    assert c.whole_folder is False
    u = c.unet
    assert u.block_out_channels == (64, 128, 256, 512) and u.layers_per_block == 2 and u.norm_num_groups == 8
    assert (u.attention_heads, u.attention_head_dim, u.attention_max_size) == (4, 32, None)


def test_paper_budget_overrides_nothing():
    assert BUDGETS["paper"] == {"train": {}, "ddpm": {}}
    assert budget_overrides("paper", "train") == {} and budget_overrides("paper", "ddpm") == {}


def test_breastmnist_normal_class_is_the_papers_label_1():
    assert get_spec("breastmnist").normal_classes == ("1",)
    assert get_spec("pneumoniamnist").normal_classes == ("0",)
