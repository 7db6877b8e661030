"""Reviews both ways, with a trail: an operator confirms a call, marks an NG call good (a false
call) or an OK call NG (a missed defect).

Storage (outlives restarts): ``<results>/reviews/reviews.jsonl``, one JSON line per review,
appended and fsynced before the answer (the trail: never rewritten; a later review of the same
result supersedes an earlier one). ``<results>`` is serve's ``--out`` (else the watcher's output
folder). Each review of a part whose truth is NG (an OK call marked NG, or an NG call confirmed)
copies its image to ``<results>/reviews/<product>/ng/<result id><suffix>`` (``default`` for the
unnamed product): a folder of real defects that ``patchcore-rt threshold BUNDLE --ng DIR`` reads
as is. A review record::

    {"kind": "review", "id": "review-<hex>", "result": "<result id>", "record_id": "<the scored
     record's id, when it has one>", "product": "a" | null, "file": "...", "bundle": "...",
     "score": 0.41, "call": "ok" | "ng", "review": "confirm" | "good" | "ng", "truth": "ok" | "ng",
     "reviewer": "name", "time": "<UTC ISO>", "image": "a/ng/<id>.png" | null}

It goes out through the publisher like any result, so a ``--publish sqlite://`` or postgres
table gets a row (``verdict`` empty, the review in its ``record`` column).
"""

from __future__ import annotations

import json
import os
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Callable

from ..errors import OutputError
from ..line.records import now_iso

REVIEWS = ("confirm", "good", "ng")
REVIEWER = re.compile(r"^[^\x00-\x1f\x7f]{1,64}$")


class ReviewRefused(ValueError):
    """A review that does not fit the call (``good`` of an OK call, ``ng`` of an NG call), or no reviewer."""


def truth_of(call: str | None, review: str) -> str:
    if review not in REVIEWS:
        raise ReviewRefused(f"review must be one of {', '.join(REVIEWS)}, not {str(review)[:20]!r}")
    if call not in ("ok", "ng"):
        raise ReviewRefused(f"only parts called ok or ng are reviewed (this one is {call!r})")
    if review == "good" and call != "ng":
        raise ReviewRefused("\"good\" marks an NG call good; this part was called ok (confirm it instead)")
    if review == "ng" and call != "ok":
        raise ReviewRefused("\"ng\" marks a missed defect (an OK call); this part was called ng (confirm it instead)")
    return call if review == "confirm" else ("ok" if review == "good" else "ng")


class ReviewLog:
    def __init__(self, folder: Path, log: Callable[[str], None] = print):
        self.folder, self.log = Path(folder), log
        self.path = self.folder / "reviews.jsonl"
        self._lock = threading.Lock()
        self.items: list[dict[str, Any]] = []
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            lines = []
        except OSError as e:  # the folder is unusable: said now, and a review then answers 500 with the reason
            log(f"warning: {self.path}: cannot read the reviews ({e.strerror or e})")
            lines = []
        for line in lines:
            try:
                r = json.loads(line)
            except ValueError:
                continue  # a torn last line of a killed run: that review was never answered
            if isinstance(r, dict) and r.get("kind") == "review":
                self.items.append(r)

    def add(self, result_id: str, rec: dict[str, Any], review: str, reviewer: str, image: bytes | None,
            suffix: str = ".png") -> dict[str, Any]:
        """Store one review (fsynced) and, for a part whose truth is NG, its image. Returns the record."""
        reviewer = (reviewer or "").strip()
        if not REVIEWER.match(reviewer):
            raise ReviewRefused("give the reviewer's name (\"reviewer\", 1 to 64 printable characters)")
        truth = truth_of(rec.get("verdict"), review)
        product = rec.get("product")
        r = {"kind": "review", "id": f"review-{uuid.uuid4().hex}", "result": result_id, "record_id": rec.get("id"),
             "product": product, "file": rec.get("file"), "bundle": rec.get("bundle"), "score": rec.get("score"),
             "call": rec.get("verdict"), "review": review, "truth": truth, "reviewer": reviewer,
             "time": now_iso(), "image": None}
        with self._lock:
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                if truth == "ng" and image is not None:
                    rel = Path(product or "default") / "ng" / f"{result_id}{suffix}"
                    (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
                    (self.folder / rel).write_bytes(image)
                    r["image"] = rel.as_posix()
                elif truth == "ok":  # a part reviewed good is no longer a known defect
                    for old in self.folder.glob(f"{product or 'default'}/ng/{result_id}.*"):
                        old.unlink()
                with open(self.path, "a", encoding="utf-8") as f:
                    f.write(json.dumps(r, separators=(",", ":")) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            except OSError as e:
                raise OutputError(f"{self.folder}: cannot store the review ({e.strerror or e})") from None
            self.items.append(r)
        return r

    def latest(self) -> dict[str, dict[str, Any]]:
        """The latest review of each result (by result id)."""
        with self._lock:
            return {r["result"]: r for r in self.items}

    def known_ng(self, product: str | None) -> list[tuple[Path, dict[str, Any]]]:
        """The product's parts reviewed NG whose image is stored: what a teach must keep NG."""
        out = []
        for r in self.latest().values():
            if r.get("product") == product and r.get("truth") == "ng" and r.get("image"):
                path = self.folder / r["image"]
                if path.is_file():
                    out.append((path, r))
        return out

    def since(self, after: int = 0, limit: int = 1000) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r, seq=i + 1) for i, r in enumerate(self.items)][after:][:limit]

    def counts(self) -> dict[str, int]:
        latest = self.latest().values()
        return {"total": len(self.items), "ng": sum(r.get("truth") == "ng" for r in latest),
                "good": sum(r.get("review") == "good" for r in latest)}
