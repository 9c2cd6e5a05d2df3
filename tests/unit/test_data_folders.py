"""Image-folder datasets: any image mode/size in, fixed-size RGB out; stratified split; cache; one clear error each."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dia_ray.data import folders, load_dataset, prepare
from dia_ray.errors import DataError

MODES = [("L", (40, 30), ".png"), ("RGB", (224, 224), ".jpg"), ("L", (17, 50), ".bmp"),
         ("RGB", (64, 96), ".tif"), ("I;16", (33, 33), ".png"), ("RGBA", (20, 20), ".png")]


def write_image(path: Path, i: int = 0) -> Path:
    mode, size, suffix = MODES[i % len(MODES)]
    path = path.with_suffix(suffix)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(i)
    if mode == "I;16":
        Image.fromarray(rng.integers(0, 4096, size[::-1], dtype=np.uint16)).save(path)
    else:
        channels = {"L": (), "RGB": (3,), "RGBA": (4,)}[mode]
        Image.fromarray(rng.integers(0, 256, (*size[::-1], *channels), dtype=np.uint8), mode).save(path)
    return path


def write_classes(root: Path, counts: dict[str, int]) -> None:
    for cls, n in counts.items():
        for i in range(n):
            write_image(root / cls / f"img{i:03d}", i)


def test_grey_rgb_and_any_size_load_as_rgb_at_the_image_size(tmp_path):
    write_classes(tmp_path / "train", {"good": 6})
    write_classes(tmp_path / "test", {"good": 6, "bad": 6})
    ds = load_dataset("folder", tmp_path, normal_class="good", image_size=32)
    assert ds.train.images.shape == (6, 32, 32, 3) and ds.train.images.dtype == np.uint8
    assert ds.test.images.shape == (12, 32, 32, 3)
    assert ds.test.labels.tolist() == [0] * 6 + [1] * 6  # class folders in sorted order: bad, good
    assert dict(zip(*np.unique(ds.test.classes, return_counts=True))) == {"bad": 6, "good": 6}
    assert np.array_equal(ds.test.labels, (ds.test.classes == "good").astype(np.int64))
    assert ds.source == tmp_path and ds.split_info["presplit"] is True


def test_images_are_decoded_with_pil_bilinear_resize(tmp_path):
    path = write_image(tmp_path / "x", 1)  # RGB 224 x 224
    expected = np.asarray(Image.open(path).convert("RGB").resize((28, 28), Image.BILINEAR))
    assert np.array_equal(folders.decode_image(path, 28), expected)


def test_generic_folder_dataset_trains_on_the_normal_class_only(tmp_path):
    write_classes(tmp_path / "train", {"good": 3, "bad": 2})
    write_classes(tmp_path / "test", {"good": 2, "bad": 2})
    ds = load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    assert len(ds.train) == 3 and set(ds.train.classes) == {"good"}
    assert ds.split_info["train_excluded"] == {"bad": 2}


def test_not_presplit_folder_gets_a_deterministic_stratified_7_to_3_split(tmp_path):
    write_classes(tmp_path / "covid", {"non-COVID": 20, "COVID": 10})
    first = load_dataset("covid", tmp_path, image_size=8)
    again = load_dataset("covid", tmp_path, image_size=8)
    assert first.split_info == {"presplit": False, "test_fraction": 0.3, "seed": 0, "train_excluded": {"COVID": 7}}
    assert len(first.train) == 14  # 70% of the 20 normal images; the 7 train COVID images are excluded
    assert dict(zip(*np.unique(first.test.classes, return_counts=True))) == {"COVID": 3, "non-COVID": 6}
    assert np.array_equal(first.train.images, again.train.images)
    assert np.array_equal(first.test.images, again.test.images)
    listing = folders.scan(first.spec, tmp_path)
    other = folders.stratified_split({"non-COVID": sorted(listing.files[listing.classes == "non-COVID"])}, 0.3, 1)
    assert [r[0] for r in other] != listing.splits[listing.classes == "non-COVID"].tolist()  # the seed matters


def test_kvasir_raw_folders_make_polyps_the_anomaly(tmp_path):
    raw = {"polyps": 4, "dyed-lifted-polyps": 4, "normal-cecum": 4, "esophagitis": 4}
    write_classes(tmp_path / "kvasir-anomaly-polyps", raw)
    ds = load_dataset("kvasir", tmp_path, image_size=8)
    assert ds.spec.normal_classes == ("esophagitis", "normal-cecum")
    assert set(ds.train.classes) == {"esophagitis", "normal-cecum"}
    assert set(ds.test.classes[ds.test.labels == 0]) == {"polyps", "dyed-lifted-polyps"}


def test_aptos_grade_zero_is_normal_and_every_other_grade_anomalous(tmp_path):
    write_classes(tmp_path / "APTOS2019" / "split" / "train", {"0": 3, "2": 2})
    write_classes(tmp_path / "APTOS2019" / "split" / "test", {str(g): 2 for g in range(5)})
    ds = load_dataset("aptos", tmp_path, image_size=8)
    assert len(ds.train) == 3 and int(ds.test.labels.sum()) == 2 and len(ds.test) == 10


def test_decoded_images_are_cached_and_reloaded_without_decoding(tmp_path, monkeypatch):
    write_classes(tmp_path / "train", {"good": 3})
    write_classes(tmp_path / "test", {"good": 2, "bad": 2})
    first = load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    caches = list((tmp_path / ".dia-ray-cache").glob("folder-16px-*.npz"))
    assert len(caches) == 1
    monkeypatch.setattr(folders, "decode_image", lambda *a: pytest.fail("decoded although cached"))
    again = load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    assert np.array_equal(first.test.images, again.test.images)


def test_cache_is_rebuilt_when_the_file_list_changes(tmp_path):
    write_classes(tmp_path / "train", {"good": 3})
    write_classes(tmp_path / "test", {"good": 2, "bad": 2})
    load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    write_image(tmp_path / "test" / "bad" / "new", 3)
    assert len(load_dataset("folder", tmp_path, normal_class="good", image_size=16).test) == 5
    assert len(list((tmp_path / ".dia-ray-cache").glob("*.npz"))) == 1  # the superseded cache is removed


def test_half_written_cache_is_never_read(tmp_path):
    write_classes(tmp_path / "train", {"good": 3})
    write_classes(tmp_path / "test", {"good": 2, "bad": 2})
    first = load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    cache = next((tmp_path / ".dia-ray-cache").glob("*.npz"))
    cache.write_bytes(cache.read_bytes()[:500])  # a crash mid-write that somehow bypassed the rename
    again = load_dataset("folder", tmp_path, normal_class="good", image_size=16)
    assert np.array_equal(first.test.images, again.test.images)


def _missing_test(root):
    write_classes(root / "train", {"good": 2})


def _empty_class(root):
    write_classes(root / "train", {"good": 2})
    write_classes(root / "test", {"good": 2})
    (root / "test" / "bad").mkdir()


def _broken_image(root):
    write_classes(root / "train", {"good": 2})
    write_classes(root / "test", {"good": 2, "bad": 1})
    (root / "test" / "bad" / "broken.png").write_bytes(b"\x89PNG not really")


def _no_normal_class(root):
    write_classes(root / "train", {"other": 2})
    write_classes(root / "test", {"good": 1, "bad": 1})


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (_missing_test, "test/ missing; expected {root}/train/<class>/ and {root}/test/<class>/"),
        (_empty_class, "class folder {root}/test/bad holds no images"),
        (_broken_image, "{root}/test/bad/broken.png: cannot decode image"),
        (_no_normal_class, "{root}: normal class 'good' not present in the train split (classes found: other)"),
    ],
    ids=["missing-test", "empty-class", "broken-image", "no-normal-class"],
)
def test_bad_folder_raises_one_line_data_error(tmp_path, make, message):
    make(tmp_path)
    with pytest.raises(DataError) as err:
        load_dataset("folder", tmp_path, normal_class="good", image_size=8)
    assert message.format(root=tmp_path) in str(err.value) and "\n" not in str(err.value)


def test_missing_dataset_folder_explains_the_expected_layout(tmp_path):
    with pytest.raises(DataError, match=r"OCT2017 not found; expected .*OCT2017/\{train,test\}/\{CNV\|DME\|DRUSEN\|"
                                        r"NORMAL\}/ image folders"):
        prepare("retina", tmp_path)


def test_folder_dataset_needs_a_normal_class(tmp_path):
    with pytest.raises(DataError, match="needs --normal-class"):
        load_dataset("folder", tmp_path)
