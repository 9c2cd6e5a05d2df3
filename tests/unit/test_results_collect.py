"""The collector reads every result record on disk and reports - never crashes on - what it cannot use."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dia_ray.errors import StorageError
from dia_ray.results.collect import collect
from dia_ray.results.records import SCHEMA_VERSION, ResultRecord, write_records


def record(seed: int = 0, **changes) -> ResultRecord:
    fields = dict(dataset="breastmnist", method="dia", seed=seed, config_hash="abc123", params={"kernel_size": 7},
                  auroc_last=0.7 + seed / 100, auroc_best_test=0.75, best_epoch=3, epochs=5,
                  test_scores=[0.1, 0.9, 0.4], test_labels=[0, 1, 1])
    return ResultRecord(**{**fields, **changes})


def test_collect_reads_every_jsonl_below_the_root_and_deduplicates_by_record_id(tmp_path):
    a, b = record(0), record(1)
    write_records(tmp_path / "results" / "trial_a.jsonl", [a, b])
    write_records(tmp_path / "sweeps" / "s" / "breastmnist" / "trial_0" / "records.jsonl", [a])  # same record twice
    (tmp_path / "results" / "notes.txt").write_text("not a record file, not read")
    got = collect(tmp_path)
    assert sorted(r.record_id for r in got.records) == sorted([a.record_id, b.record_id])
    assert got.files == 2 and got.duplicates == 1 and got.problems == []
    assert "2 record(s) from 2 file(s)" in got.summary()


def test_truncated_last_line_is_skipped_and_reported_with_its_line_number(tmp_path):
    path = Path(write_records(tmp_path / "results" / "t.jsonl", [record(0), record(1)]))
    with path.open("a") as fh:
        fh.write(json.dumps(record(2).model_dump(mode="json"))[:40])  # a writer died mid-line
    got = collect(tmp_path)
    assert [r.seed for r in got.records] == [0, 1]
    assert got.problems == [f"{path}:3: truncated last line (the writer crashed mid-write?); skipped"]


def test_v1_record_is_upgraded_to_auroc_last_and_best_test(tmp_path):
    v1 = {"schema_version": 1, "dataset": "kvasir", "method": "csi", "seed": 4, "config_hash": "old", "auroc": 0.61,
          "epochs": 100}
    (tmp_path / "old.jsonl").write_text(json.dumps(v1) + "\n")
    got = collect(tmp_path)
    assert got.problems == []
    (rec,) = got.records
    got_fields = (rec.schema_version, rec.auroc_last, rec.auroc_best_test, rec.best_epoch)
    assert got_fields == (SCHEMA_VERSION, 0.61, 0.61, 100)


def test_record_from_a_newer_schema_is_skipped_with_an_upgrade_hint(tmp_path):
    newer = {**record(0).model_dump(mode="json"), "schema_version": SCHEMA_VERSION + 1}
    path = tmp_path / "new.jsonl"
    path.write_text(json.dumps(record(1).model_dump(mode="json")) + "\n" + json.dumps(newer) + "\n")
    got = collect(tmp_path)
    assert [r.seed for r in got.records] == [1]
    (problem,) = got.problems
    assert problem.startswith(f"{path}:2: written by a newer dia-ray (schema_version {SCHEMA_VERSION + 1}")
    assert "upgrade dia-ray" in problem


def test_non_json_files_are_one_problem_each_and_do_not_hide_good_records(tmp_path):
    write_records(tmp_path / "good.jsonl", [record(0)])
    (tmp_path / "log.jsonl").write_text("INFO starting\nWARNING something\nINFO done\n")
    (tmp_path / "blob.jsonl").write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n")
    (tmp_path / "partial.jsonl").write_text(json.dumps({"dataset": "kvasir"}) + "\n")
    got = collect(tmp_path)
    assert len(got.records) == 1
    problems = "\n".join(got.problems)
    assert len(got.problems) == 4
    assert f"{tmp_path / 'log.jsonl'}: not a JSON-lines file (3 lines, none is JSON)" in problems
    assert f"{tmp_path / 'blob.jsonl'}: not a JSON-lines file (not UTF-8 text)" in problems
    assert f"{tmp_path / 'list.jsonl'}:1: not a result record (a JSON list" in problems
    assert f"{tmp_path / 'partial.jsonl'}:1: not a valid result record (method: Field required)" in problems


def test_empty_directory_gives_an_empty_collection_and_a_clear_message(tmp_path):
    got = collect(tmp_path)
    assert got.empty and len(got) == 0 and got.problems == []
    assert got.summary() == f"no result records under {tmp_path}: no *.jsonl files found (has a trial finished yet?)"
    assert got.frame().empty and "auroc_last" in got.frame().columns


def test_directory_with_only_broken_files_says_so(tmp_path):
    (tmp_path / "x.jsonl").write_text("{\"dataset\": ")
    got = collect(tmp_path)
    assert got.empty and len(got.problems) == 1
    assert "1 *.jsonl file(s) read, none held a valid record" in got.summary()


def test_missing_root_is_a_storage_error_with_one_line(tmp_path):
    with pytest.raises(StorageError) as err:
        collect(tmp_path / "nope")
    assert str(err.value) == (f"storage root {tmp_path / 'nope'} does not exist "
                              "(pass the --storage of a sweep or demo)")
    assert "\n" not in str(err.value)


def test_frame_has_one_row_per_record_with_flattened_params(tmp_path):
    write_records(tmp_path / "r.jsonl", [record(0), record(1, params={"t_min": 30, "t_max": 130})])
    frame = collect(tmp_path).frame()
    assert len(frame) == 2
    assert frame["param.kernel_size"].tolist()[0] == 7
    assert frame["param.t_min"].tolist()[1] == 30
    assert frame["n_test"].tolist() == [3, 3]
    assert frame["test_scores"].iloc[0] == [0.1, 0.9, 0.4]


@pytest.mark.parametrize("changes, reason", [
    ({"test_labels": [1, 1, 1]}, "every test label is 1 (one class only: AUROC is undefined)"),
    ({"test_scores": [0.1, float("nan"), 0.4]}, "1 of 3 test scores are NaN or infinite (a diverged run?)"),
    ({"test_scores": [0.1, 0.9]}, "2 test scores for 3 test labels"),
    ({"auroc_last": 1.2}, "auroc_last 1.2 is not an AUROC in [0, 1]"),
    ({"auroc_best_test": float("nan")}, "auroc_best_test nan is not an AUROC in [0, 1]"),
    ({"test_labels": [0, 2, 1]}, "test labels other than 0 (anomaly) and 1 (normal): [2]"),
])
def test_records_that_cannot_be_tabulated_are_skipped_and_named(tmp_path, changes, reason):
    path = write_records(tmp_path / "r.jsonl", [record(0), record(1, **changes)])
    got = collect(tmp_path)
    assert [r.seed for r in got.records] == [0]
    assert got.problems == [f"{path}:2: record breastmnist/dia seed 1: {reason}; skipped"]


def test_records_without_scores_are_still_tabulated(tmp_path):
    write_records(tmp_path / "r.jsonl", [record(0, test_scores=[], test_labels=[])])
    assert len(collect(tmp_path).records) == 1 and collect(tmp_path).problems == []


def test_collection_remembers_the_file_of_each_record(tmp_path):
    a = write_records(tmp_path / "a" / "x.jsonl", [record(0)])
    b = write_records(tmp_path / "b.jsonl", [record(1)])
    got = collect(tmp_path)
    assert got.frame().set_index("seed")["source"].to_dict() == {0: str(a), 1: str(b)}
