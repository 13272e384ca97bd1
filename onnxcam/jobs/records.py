"""Writing a job's records: one part file per chunk as the job runs, the record files when it finishes.

Parts (``parts/part-NNNNNNNN.json``, one per chunk, keyed by the chunk index) are written whole and
atomically after the chunk's overlays, so a part on disk means the chunk is done, and writing a chunk
again (an engine retried it) writes the same file: nothing is ever duplicated. The record files
(``records.parquet``, ``records.jsonl``, ``metrics.csv``) are streamed from the parts into temp files
and renamed into place, so they hold a whole finished job or nothing.

Parquet rows and CSV rows are one per (image, method); JSON Lines rows one per image, nested as in
``metrics.json``.
"""

from __future__ import annotations

import csv
import json
import os
import re
import secrets
from collections.abc import Iterator, Sequence
from contextlib import suppress
from pathlib import Path
from typing import IO, Any

from onnxcam.errors import ArgumentError, OutputError
from onnxcam.jobs.work import ChunkResult
from onnxcam.output import OutputDir, write_json

__all__ = ["PARTS", "RecordWriters", "StreamFile", "done_chunks", "flat_rows", "read_parts", "write_chunk"]

PARTS = "parts"
_PART = re.compile(r"^part-(\d{8})\.json$")


def part_name(chunk: int) -> str:
    return f"{PARTS}/part-{chunk:08d}.json"


def _write_bytes(path: Path, data: bytes) -> None:
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"cannot write {str(path)!r}: {exc.strerror or exc}; choose another output folder "
                              "(--out)") from exc
        raise


def write_chunk(out: OutputDir, result: ChunkResult) -> bool:
    """Write a chunk's overlays, then its part (the commit); False if the part was already there."""
    part = out.target(part_name(result.chunk))
    if part.exists():
        return False
    for name, data in result.overlays:
        dest = out.target(name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        _write_bytes(dest, data)
    part.parent.mkdir(parents=True, exist_ok=True)
    write_json(part, {"chunk": result.chunk, "images": result.images, "device": result.device,
                      "records": result.records, "failed": result.failed, "notes": result.notes})
    return True


def done_chunks(folder: Path) -> set[int]:
    """The chunks whose part is on disk."""
    d = folder / PARTS
    if not d.is_dir():
        return set()
    return {int(m.group(1)) for m in (_PART.match(p.name) for p in d.iterdir()) if m}


def read_parts(folder: Path) -> Iterator[dict[str, Any]]:
    """The parts in chunk order, one at a time."""
    for chunk in sorted(done_chunks(folder)):
        path = folder / part_name(chunk)
        try:
            yield json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise OutputError(f"cannot read {path}: {exc}; delete it and run again with --resume (its images "
                              "will be redone)") from exc


class StreamFile:
    """A file written bit by bit into a temp name and renamed into place on ``commit``."""

    def __init__(self, path: Path, binary: bool = False) -> None:
        self.path = path
        self.tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        self.f: IO[Any] = open(self.tmp, "wb") if binary else open(self.tmp, "w", encoding="utf-8", newline="")

    def commit(self) -> None:
        self.f.close()
        os.replace(self.tmp, self.path)

    def discard(self) -> None:
        self.f.close()
        with suppress(OSError):
            self.tmp.unlink()


def flat_rows(record: dict[str, Any], keys: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method of an image's record: what ``metrics.csv`` and ``records.parquet`` hold."""
    top = record["predictions"][0] if record["predictions"] else {"probability": None}
    rows = []
    for m, res in record["methods"].items():
        rows.append({
            "index": record["index"], "file": record["file"], "method": m, "class": res["class"],
            "label": res["label"], "probability": top["probability"], "near_tie": bool(record["near_tie"]),
            **{k: res["values"].get(k) for k in keys},
            "random_insertion_auc": record.get("random_insertion_auc"),
            "flags": ";".join(res["flags"] + (["near_tie"] if record["near_tie"] else [])),
            "true_label": record.get("true_label"), "true_class": record.get("true_class"),
            "correct": record.get("correct"), "overlay": res.get("overlay"),
        })
    return rows


_CSV_HEAD = ["file", "method", "class", "label", "probability", "near_tie"]
_CSV_TAIL = ["random_insertion_auc", "flags"]
_TRUTH = ["true_label", "true_class", "correct"]


class RecordWriters:
    """``records.jsonl``, ``metrics.csv`` and ``records.parquet``, streamed, committed together."""

    def __init__(self, out: OutputDir, keys: Sequence[str], labelled: bool) -> None:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as exc:  # a dependency of onnxcam: only a broken install lacks it
            raise ArgumentError('records.parquet needs pyarrow: pip install pyarrow (or reinstall onnxcam)') from exc
        self.keys = list(keys)
        self.columns = [*_CSV_HEAD, *self.keys, *_CSV_TAIL, *(_TRUTH if labelled else []), "overlay"]
        self.jsonl = StreamFile(out.target("records.jsonl"))
        self.csv_file = StreamFile(out.target("metrics.csv"))
        self.csv = csv.DictWriter(self.csv_file.f, fieldnames=self.columns, extrasaction="ignore", lineterminator="\n")
        self.csv.writeheader()
        fields = [pa.field("index", pa.int64()), pa.field("file", pa.string()), pa.field("method", pa.string()),
                  pa.field("class", pa.int64()), pa.field("label", pa.string()),
                  pa.field("probability", pa.float64()), pa.field("near_tie", pa.bool_()),
                  *[pa.field(k, pa.float64()) for k in self.keys],
                  pa.field("random_insertion_auc", pa.float64()), pa.field("flags", pa.string()),
                  pa.field("true_label", pa.string()), pa.field("true_class", pa.int64()),
                  pa.field("correct", pa.bool_()), pa.field("overlay", pa.string())]
        self.schema = pa.schema(fields)
        self._pa = pa
        self.parquet_file = StreamFile(out.target("records.parquet"), binary=True)
        self.parquet = pq.ParquetWriter(self.parquet_file.f, self.schema)

    def write(self, records: Sequence[dict[str, Any]]) -> None:
        """One chunk's records: a line each in the JSONL, a row per method in the CSV and a row group."""
        rows: list[dict[str, Any]] = []
        for record in records:
            self.jsonl.f.write(json.dumps(record, ensure_ascii=False, allow_nan=False) + "\n")
            rows += flat_rows(record, self.keys)
        for row in rows:
            self.csv.writerow({k: "" if row.get(k) is None else (int(row[k]) if isinstance(row[k], bool) else row[k])
                               for k in self.columns})
        if rows:
            self.parquet.write_table(self._pa.Table.from_pylist(rows, schema=self.schema))

    def commit(self) -> list[Path]:
        self.parquet.close()
        for f in (self.parquet_file, self.jsonl, self.csv_file):
            f.commit()
        return [self.parquet_file.path, self.jsonl.path, self.csv_file.path]

    def discard(self) -> None:
        with suppress(Exception):
            self.parquet.close()
        for f in (self.parquet_file, self.jsonl, self.csv_file):
            f.discard()

