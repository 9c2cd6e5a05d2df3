"""The collector: every result record under a storage root, read from disk only (works during and after a sweep).

Trials write ``*.jsonl`` files under ``ROOT/results/`` and possibly inside Tune trial directories; the collector
reads every ``*.jsonl`` below the root, lifts older schemas with :func:`~dia_ray.results.records.upgrade`, validates
each line into a :class:`~dia_ray.results.records.ResultRecord` and keeps one record per ``record_id`` (the same
record may be stored twice, e.g. in a trial dir and in ``results/``). Anything it cannot use - a truncated last line
from a crashed writer, a record from a newer dia-ray, a file that is not JSON lines - is skipped and reported as one
``"path:line: reason"`` string in :attr:`Collection.problems`; it never stops the leaderboard. So is a record whose
numbers cannot be tabulated honestly: an AUROC outside [0, 1], test labels of one class only, NaN scores (a
diverged run), or a different number of scores and labels.

File access goes through :mod:`dia_ray.results.files` only.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pydantic import ValidationError

from dia_ray.results.files import check_root, list_jsonl, read_bytes
from dia_ray.results.records import SCHEMA_VERSION, ResultRecord, upgrade

PARAM_PREFIX = "param."  # flattened `params` columns in Collection.frame(): param.kernel_size, param.t_min, ...


@dataclass
class Collection:
    """The valid, de-duplicated records under ``root`` and what could not be read."""

    root: str
    records: list[ResultRecord] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)  # record_id -> the *.jsonl file it was read from
    problems: list[str] = field(default_factory=list)  # "path:line: reason", one per skipped thing
    files: int = 0  # *.jsonl files read
    duplicates: int = 0  # records skipped because their record_id was already collected

    def __len__(self) -> int:
        return len(self.records)

    @property
    def empty(self) -> bool:
        return not self.records

    def summary(self) -> str:
        """One line for the user: how many records came from where, or why there are none."""
        if not self.files:
            return f"no result records under {self.root}: no *.jsonl files found (has a trial finished yet?)"
        if self.empty:
            return (f"no result records under {self.root}: {self.files} *.jsonl file(s) read, none held a valid "
                    f"record ({len(self.problems)} problem(s) reported)")
        extra = f", {len(self.problems)} problem(s) skipped" if self.problems else ""
        return f"{len(self.records)} record(s) from {self.files} file(s) under {self.root}{extra}"

    def frame(self) -> pd.DataFrame:
        """One row per record. ``params`` stays a dict column and is also flattened into ``param.<name>`` columns;
        ``test_scores``/``test_labels`` are list columns (for DeLong statistics); ``n_test`` is their length;
        ``source`` is the file the record was read from."""
        rows = []
        for rec in self.records:
            row = rec.model_dump(mode="json")
            row["n_test"] = len(rec.test_labels)
            row["source"] = self.sources.get(rec.record_id)
            for key, value in rec.params.items():
                row[PARAM_PREFIX + key] = tuple(value) if isinstance(value, list) else value
            rows.append(row)
        columns = [*ResultRecord.model_fields, "n_test", "source"]
        frame = pd.DataFrame(rows)
        return frame.reindex(columns=[*columns, *[c for c in frame.columns if c not in columns]])


def collect(root: str | os.PathLike) -> Collection:
    """Read every ``*.jsonl`` below ``root`` (recursively, in path order). Raises :class:`StorageError` only when
    ``root`` is missing or not a directory; everything else unreadable lands in ``Collection.problems``."""
    out = Collection(root=check_root(root))
    for path in list_jsonl(out.root):
        out.files += 1
        for record in _read_file(path, out.problems):
            if record.record_id in out.sources:
                out.duplicates += 1
                continue
            out.sources[record.record_id] = path
            out.records.append(record)
    return out


def _read_file(path: str, problems: list[str]) -> list[ResultRecord]:
    try:
        text = read_bytes(path).decode("utf-8")
    except UnicodeDecodeError:
        problems.append(f"{path}: not a JSON-lines file (not UTF-8 text); skipped")
        return []
    except OSError as err:
        problems.append(f"{path}: cannot be read ({err.strerror or err}); skipped")
        return []
    lines = text.split("\n")
    ends_cleanly = text.endswith("\n")
    if ends_cleanly:
        lines.pop()
    records: list[ResultRecord] = []
    bad: list[str] = []
    json_lines = 0
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not ends_cleanly and line.lstrip().startswith("{"):
                bad.append(f"{path}:{number}: truncated last line (the writer crashed mid-write?); skipped")
            else:
                bad.append(f"{path}:{number}: not JSON ({err.msg}); skipped")
            continue
        json_lines += 1
        record, reason = _parse(raw)
        reason = reason or _untabulable(record)
        if reason:
            bad.append(f"{path}:{number}: {reason}; skipped")
        else:
            records.append(record)
    if bad and not json_lines and len(bad) > 1:
        # A whole file of non-JSON is one problem, not one per line.
        problems.append(f"{path}: not a JSON-lines file ({len(bad)} lines, none is JSON); skipped")
    else:
        problems.extend(bad)
    return records


def _parse(raw: Any) -> tuple[ResultRecord | None, str]:
    if not isinstance(raw, dict):
        return None, f"not a result record (a JSON {type(raw).__name__}, expected an object)"
    try:
        version = int(raw.get("schema_version", 1))
    except (TypeError, ValueError):
        return None, f"schema_version {raw.get('schema_version')!r} is not an integer"
    if version > SCHEMA_VERSION:
        return None, (f"written by a newer dia-ray (schema_version {version}, this one reads <= {SCHEMA_VERSION}); "
                      "upgrade dia-ray to read it")
    try:
        lifted = upgrade(raw)
    except ValueError as err:
        return None, str(err)
    try:
        return ResultRecord.model_validate(lifted), ""
    except ValidationError as err:
        first = err.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "<record>"
        return None, f"not a valid result record ({loc}: {first['msg']})"


def _untabulable(record: ResultRecord) -> str:
    """Why ``record``'s numbers cannot go into a table ("" when they can). Records without per-image scores (older
    schemas) are fine: they get a row without a confidence interval."""
    name = f"record {record.dataset}/{record.method} seed {record.seed}"
    for key in ("auroc_last", "auroc_best_test"):
        value = getattr(record, key)
        if not (math.isfinite(value) and 0.0 <= value <= 1.0):
            return f"{name}: {key} {value} is not an AUROC in [0, 1]"
    labels, scores = record.test_labels, np.asarray(record.test_scores, dtype=float)
    if not labels and not scores.size:
        return ""
    if len(labels) != scores.size:
        return f"{name}: {scores.size} test scores for {len(labels)} test labels"
    if not set(labels) <= {0, 1}:
        return f"{name}: test labels other than 0 (anomaly) and 1 (normal): {sorted(set(labels) - {0, 1})[:3]}"
    if len(set(labels)) < 2:
        return f"{name}: every test label is {labels[0]} (one class only: AUROC is undefined)"
    bad = int((~np.isfinite(scores)).sum())
    if bad:
        return f"{name}: {bad} of {scores.size} test scores are NaN or infinite (a diverged run?)"
    return ""
