"""``patchcore-rt score``: score an archive (a folder tree or a list of files) into JSON lines or
Parquet, resumably.

Each input is identified like a watched file (:mod:`runtime.line.journal`): its name, size and
mtime in nanoseconds. Results are written as they come, durably (JSON lines: one fsynced write
per batch, a torn last line cut off on reopening; Parquet: a folder of part files, each written
under a temporary name and renamed whole), so a rerun of the same command after a crash or a
kill scores only what has no result yet, and no input gets two. In-process scoring and Ray Data
(:mod:`runtime.line.score_ray`) produce the same records; only where the model runs differs.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from ..errors import OutputError, UsageError
from .journal import Journal
from .ray_cluster import INSTALL_HINT
from .records import Item, record, score_items
from .image_files import collect_inputs

InputKey = tuple[str, int, int]  # (name, size, mtime_ns): what an output's records are matched on

PARQUET_COLUMNS = (  # the Parquet schema, in column order (name, arrow type name)
    ("file", "string"), ("size", "int64"), ("mtime_ns", "int64"), ("score", "float64"), ("normalised", "float64"),
    ("verdict", "string"), ("latency_ms", "float64"), ("bundle", "string"), ("time", "string"), ("error", "string"),
)


@dataclass(frozen=True)
class Input:
    """One file to score: where to read it, the name its record carries, and its identity."""

    path: str
    name: str
    size: int
    mtime_ns: int

    @property
    def key(self) -> InputKey:
        return (self.name, self.size, self.mtime_ns)


def list_inputs(paths: Sequence[Path], list_file: Path | None = None) -> list[Input]:
    """The files to score: folders' images (sub-folders too, sorted) and the files named one per
    line in ``list_file`` (blank lines and ``#`` comments skipped), in that order, each once."""
    pairs: list[tuple[Path, str]] = collect_inputs(list(paths), recursive=True) if paths else []
    if list_file is not None:
        try:
            lines = list_file.read_text().splitlines()
        except OSError as e:
            raise UsageError(f"cannot read the file list {list_file}: {e.strerror or e}") from None
        named = [Path(s.strip()) for s in lines if s.strip() and not s.lstrip().startswith("#")]
        missing = [str(p) for p in named if not p.is_file()]
        if missing:
            more = f" (and {len(missing) - 3} more)" if len(missing) > 3 else ""
            raise UsageError(f"{list_file}: {len(missing)} listed file(s) not found: {', '.join(missing[:3])}{more}")
        pairs += [(p, str(p)) for p in named]
    if not pairs:
        raise UsageError("nothing to score: give folders or files, or --list FILE")
    out, seen = [], set()
    for path, name in pairs:
        if name in seen:
            continue
        seen.add(name)
        st = path.stat()
        out.append(Input(str(path), name, st.st_size, st.st_mtime_ns))
    return out


def score_records(predictor, inputs: Sequence[Input]) -> list[dict[str, Any]]:
    """Score ``inputs`` as one batch; one record per input (an unreadable file gets an error
    record). The one scoring step of both the in-process and the Ray Data paths."""
    items = [Item(i.name, path=Path(i.path), extra={"size": i.size, "mtime_ns": i.mtime_ns}) for i in inputs]
    bundle_id = predictor.bundle.bundle_id
    return [record(o, bundle_id, precision=predictor.precision) for o in score_items(predictor, items)]


def score_in_process(predictor, todo: Sequence[Input], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    for s in range(0, len(todo), batch_size):
        yield score_records(predictor, todo[s : s + batch_size])


# ------------------------------------------------------------------------------------------ sinks
class JsonlSink:
    """Results as JSON lines in one file, which is also the record of what is done."""

    def __init__(self, path: Path):
        if path.is_dir():
            raise OutputError(f"{path}: is a folder; give a .jsonl file (or a .parquet folder)")
        try:
            self.journal = Journal(path)
        except OSError as e:
            raise OutputError(f"{path}: cannot write: {e.strerror or e}") from None
        self.done: set[InputKey] = set(self.journal.records)
        self.bundles = {str(r.get("bundle")) for recs in self.journal.records.values() for r in recs}

    def append(self, records: list[dict[str, Any]]) -> None:
        self.journal.append(records)

    def close(self) -> None:
        self.journal.close()


class ParquetSink:
    """Results as a folder of Parquet part files (one dataset for pyarrow, pandas, Spark or Ray
    Data). A part is written under a dot-name (which readers skip), fsynced and renamed, so a
    part is either whole or absent; records wait in memory until ``flush_every`` are buffered."""

    def __init__(self, folder: Path, flush_every: int = 1000):
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError:
            raise UsageError(f"Parquet output needs pyarrow ({INSTALL_HINT}, or pip install pyarrow)") from None
        self.pa, self.pq = pa, pq
        self.schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in PARQUET_COLUMNS])
        if folder.exists() and not folder.is_dir():
            raise OutputError(f"{folder}: exists and is not a folder (Parquet output is a folder of part files)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for stale in folder.glob(".part-*"):
                stale.unlink()  # a part that was being written when the last run died
        except OSError as e:
            raise OutputError(f"{folder}: cannot write: {e.strerror or e}") from None
        self.folder, self.flush_every = folder, flush_every
        self.done: set[InputKey] = set()
        self.bundles: set[str] = set()
        parts = sorted(folder.glob("part-*.parquet"))
        for part in parts:
            t = pq.read_table(part, columns=["file", "size", "mtime_ns", "bundle"]).to_pydict()
            self.done.update(zip(t["file"], t["size"], t["mtime_ns"]))
            self.bundles.update(t["bundle"])
        self.seq = len(parts)
        self.buffer: list[dict[str, Any]] = []

    def append(self, records: list[dict[str, Any]]) -> None:
        self.buffer += records
        if len(self.buffer) >= self.flush_every:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        name = f"part-{self.seq:06d}-{uuid.uuid4().hex[:8]}.parquet"
        tmp, dst = self.folder / f".{name}", self.folder / name
        table = self.pa.Table.from_pylist([{k: r.get(k) for k, _ in PARQUET_COLUMNS} for r in self.buffer],
                                          schema=self.schema)
        try:
            self.pq.write_table(table, tmp)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            os.replace(tmp, dst)
            fd = os.open(self.folder, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as e:
            raise OutputError(f"{dst}: cannot write: {e.strerror or e}") from None
        self.seq += 1
        self.buffer = []

    def close(self) -> None:
        self.flush()


def open_sink(out: Path):
    """A JSON-lines file for ``*.jsonl``/``*.json``, a Parquet folder for ``*.parquet``."""
    suffix = out.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return JsonlSink(out)
    if suffix == ".parquet":
        return ParquetSink(out)
    raise UsageError(f"--out {out}: give a .jsonl file or a .parquet folder")


# ------------------------------------------------------------------------------------------ the job
@dataclass
class ScoreSummary:
    out: str
    total: int
    already_done: int
    scored: int = 0
    errors: int = 0

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def run_score(inputs: Sequence[Input], out: Path, bundle_id: str,
              batches: Callable[[Sequence[Input]], Iterable[list[dict[str, Any]]]],
              advance: Callable[[int], None] = lambda n: None) -> ScoreSummary:
    """Score the ``inputs`` that ``out`` has no result for, with ``batches(todo)`` (in-process or
    Ray Data), writing each batch of records as it comes."""
    sink = open_sink(out)
    try:
        others = sorted(b for b in sink.bundles if b != bundle_id)
        if others:
            raise UsageError(f"{out} holds results of bundle {others[0]}, not of {bundle_id}: give another --out "
                             "(a rerun resumes only with the same bundle)")
        todo = [i for i in inputs if i.key not in sink.done]
        summary = ScoreSummary(str(out), len(inputs), len(inputs) - len(todo))
        advance(summary.already_done)
        if todo:
            for recs in batches(todo):
                sink.append(recs)
                summary.scored += len(recs)
                summary.errors += sum(r.get("error") is not None for r in recs)
                advance(len(recs))
        return summary
    finally:
        sink.close()


def dumps_records(records: Iterable[dict[str, Any]]) -> list[str]:
    return [json.dumps(r, ensure_ascii=False, separators=(",", ":"), allow_nan=False) for r in records]
