"""The operator's actions: mark a result good, teach the marked parts (a torch-free ``update``
in a background thread, with its progress), and switch the served bundle to the taught one.

A result counts as taught once the bundle it was taught to is served (switched to): until then
it stays marked in the review queue, and another teach includes it again; a roll back marks it
again. Marked images are copied into ``STATE/marked/<result id><suffix>`` when marked, so a teach reads
files the server named itself, and a part the watcher moved on meanwhile is still there. The
taught bundle is written under ``--models`` (default: beside the served bundle) as
``<name>-taught-<UTC time>``. A switch opens and checks the new bundle first (every checksum,
the graph, one blank image scored); a bundle that fails is refused and the old one keeps
serving. When the served ``--bundle`` is a symbolic link, the switch flips it (atomically), so a
restart, and any ``watch`` following the same link, serve the new bundle too.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..bundle import BundleError
from ..errors import OutputError, UsageError
from ..line.info import describe_update
from ..operating_point import parse_policy
from ..threshold import basis, default_out, new_version
from ..update import update_bundle
from ..line.records import Item, score_items
from .results import Result, ResultStore
from .reviews import ReviewRefused


class ActionRefused(Exception):
    """An action that cannot be done now (HTTP 409), or a bundle refused (``status`` 422)."""

    def __init__(self, message: str, status: int = 409):
        super().__init__(message)
        self.status = status


@dataclass
class TeachJob:
    state: str = "idle"  # idle, running, done (a candidate to switch to), failed, switched
    stage: str = ""
    done: int = 0
    total: int = 0
    images: int = 0
    started: float | None = None
    seconds: float | None = None
    error: str | None = None
    result: dict[str, Any] | None = None  # the update's summary (what update --json prints)
    candidate: Path | None = None  # the taught bundle a switch would serve
    taught: list[Result] = field(default_factory=list)  # the marked results it was taught
    history: list[str] = field(default_factory=list)
    check: dict[str, Any] | None = None  # the taught bundle's calls on the marked and the known-NG parts

    def view(self) -> dict[str, Any]:
        return {"state": self.state, "stage": self.stage, "done": self.done, "total": self.total,
                "images": self.images, "seconds": self.seconds, "error": self.error, "result": self.result,
                "candidate": self.result["id"] if self.result and self.candidate else None, "check": self.check}


class Operator:
    def __init__(self, source, lock: threading.Lock, store: ResultStore, state_dir: Path, models_dir: Path,
                 on_switch: Callable[[Any], None] = lambda p: None, log: Callable[[str], None] = print,
                 reviews=None, product: str | None = None, judge: Callable[[Any], Any] | None = None):
        self.source, self.lock, self.store = source, lock, store
        self.judge = judge  # the line's rule applied to a bundle (RunOptions.judge); None: the bundle's own
        self.state_dir, self.models_dir = state_dir, models_dir
        self.on_switch, self.log = on_switch, log
        self.job = TeachJob()
        self.previous: Path | None = None  # the bundle folder served before the last switch (roll back)
        self.switched_in: list[Result] = []  # the results the last switch brought into the served bundle
        self._job_lock = threading.Lock()
        self.reviews, self.product = reviews, product  # runtime.serve.reviews.ReviewLog; the taught product

    # -------------------------------------------------------------------------------- review
    def review(self, res: Result, review: str, reviewer: str) -> dict[str, Any]:
        """Store a review (:mod:`runtime.serve.reviews`); ``good`` also marks the part for a teach
        (as :meth:`mark`), a later ``ng`` or ``confirm`` of an NG call takes the mark back."""
        if review == "good" and res.record.get("product") == self.product and not res.marked:
            self.mark(res)
        try:
            r = self.reviews.add(res.id, res.record, review, reviewer, self.store.image_bytes(res), res.suffix)
        except ReviewRefused as e:
            raise ActionRefused(str(e), status=400) from None
        except OutputError as e:  # the results folder cannot be written: said, never a traceback
            raise ActionRefused(str(e), status=500) from None
        if r["truth"] == "ng" and res.marked and not res.taught:
            res.marked = False
        res.review = r
        return r

    # -------------------------------------------------------------------------------- mark
    def mark(self, res: Result, good: bool = True) -> Result:
        if res.taught:
            raise ActionRefused(f"result {res.id} is in the served bundle already (taught and switched to)")
        if not good:
            res.marked = False
            return res
        if res.record.get("verdict") != "ng":
            raise ActionRefused(f"result {res.id} is {res.record.get('verdict')!r}: only parts called defective "
                                "(\"ng\") are marked good")
        data = self.store.image_bytes(res)
        if data is None:
            raise ActionRefused(f"result {res.id}: its image is no longer available (not kept, or moved away)")
        folder = self.state_dir / "marked"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{res.id}{res.suffix}").write_bytes(data)
        res.marked = True
        return res

    # -------------------------------------------------------------------------------- teach
    def teach(self) -> TeachJob:
        marked = self.store.marked()
        with self._job_lock:
            if self.job.state == "running":
                raise ActionRefused("a teach is already running")
            if not marked:
                raise ActionRefused("nothing is marked good: mark parts in the review queue first")
            images = [(self.state_dir / "marked" / f"{r.id}{r.suffix}", str(r.record.get("file") or r.id))
                      for r in marked]
            self.job = TeachJob(state="running", images=len(images), started=time.time(), history=self.job.history)
        threading.Thread(target=self._teach, args=(marked, images), name="teach", daemon=True).start()
        return self.job

    def _teach(self, marked: list[Result], images: list[tuple[Path, str]]) -> None:
        job = self.job
        predictor = self.source.predictor
        parent = predictor.bundle
        base = re.sub(r"-taught-\d{8}-\d{6}(-\d+)?$", "", parent.root.name)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
        out = self.models_dir / f"{base}-taught-{stamp}"
        n = 1
        while out.exists():
            out, n = self.models_dir / f"{base}-taught-{stamp}-{n}", n + 1

        def progress(stage: str, done: int, total: int) -> None:
            job.stage, job.done, job.total = stage, done, total

        try:
            result = update_bundle(parent, images, predictor.embed, out, tool="patchcore-rt serve",
                                   embedder=f"{predictor.info()['engine']} {predictor.graph}", progress=progress)
        except Exception as e:  # noqa: BLE001 - shown on the page; the served bundle is untouched
            job.state, job.error = "failed", str(e) or type(e).__name__
            self.log(f"teach failed: {job.error}")
        else:
            job.stage = "checking the taught bundle on the marked and the known-NG parts"
            job.check = self._check(result.bundle.root, images)
            job.taught = marked
            job.result, job.candidate, job.state = result.summary(), result.bundle.root, "done"
            job.history.append(describe_update(result.entry))
            self.log(f"taught {len(images)} image(s): {result.bundle.root} ({result.bundle.bundle_id})")
        job.seconds = time.time() - (job.started or time.time())

    def _check(self, candidate: Path, marked: list[tuple[Path, str]]) -> dict[str, Any]:
        """The taught bundle's calls before any switch: the parts marked good (they should turn
        OK) and every part of this product reviewed NG (they must stay NG: ``turned_ok`` lists
        those that would not, and the switch is refused)."""
        known = self.reviews.known_ng(self.product) if self.reviews is not None else []
        p = self.source.open_predictor(candidate)
        items = [Item(name, path=path) for path, name in marked] + [Item(r["result"], path=path) for path, r in known]
        outcomes = score_items(p, items, judge=self.judge(p) if self.judge is not None else None)
        view = [{"id": o.item.name, "score": o.score, "verdict": o.verdict} for o in outcomes]
        ng = view[len(marked):]
        return {"threshold": p.threshold, "marked": view[:len(marked)], "known_ng": ng,
                "turned_ok": [v["id"] for v in ng if v["verdict"] != "ng"]}

    # -------------------------------------------------------------------------------- switch
    def switch(self, expected_id: str | None = None):
        """Serve the taught bundle (the latest teach's)."""
        job = self.job
        if job.state != "done" or job.candidate is None:
            raise ActionRefused("no taught bundle to switch to: teach first")
        if expected_id is not None and expected_id != job.result["id"]:
            raise ActionRefused(f"the taught bundle is {job.result['id']}, not {expected_id}")
        if job.check and job.check["turned_ok"]:
            raise ActionRefused(f"the taught bundle would call {len(job.check['turned_ok'])} part(s) reviewed NG "
                                f"good ({', '.join(job.check['turned_ok'][:5])}): not switched; unmark the parts "
                                "that look like them and teach again")
        new = self._switch_to(job.candidate)
        for r in job.taught:  # now in the served bundle: out of the review queue
            r.taught = True
        self.switched_in = job.taught
        job.candidate = None
        job.state = "switched"
        return new

    # -------------------------------------------------------------------------------- threshold
    def move_threshold(self, text: str):
        """Write the served bundle at the operating point ``text`` (a policy) as a new version
        under ``--models`` (:func:`runtime.threshold.new_version`) and serve it (a switch: checked,
        the link flipped, rolled back like any other). A bad policy is refused with status 400."""
        with self._job_lock:
            if self.job.state == "running":
                raise ActionRefused("a teach is running: move the threshold when it is done")
            parent = self.source.predictor.bundle
            try:
                policy = parse_policy(text)
                made = new_version(parent, basis(parent.manifest), policy,
                                   default_out(parent.root, policy, self.models_dir), chosen_by="patchcore-rt serve")
            except UsageError as e:
                raise ActionRefused(str(e), status=400) from None
            except OutputError as e:
                raise ActionRefused(str(e), status=500) from None
        self.log(f"threshold moved: {made.bundle.root} ({made.bundle.bundle_id}), {describe_update(made.entry)}")
        new = self._switch_to(made.bundle.root)
        self.switched_in = []
        return made, new

    def roll_back(self):
        """Serve again the bundle that was served before the last switch (checked like any switch)."""
        if self.previous is None:
            raise ActionRefused("nothing to roll back to: no switch since the server started")
        new = self._switch_to(self.previous)
        for r in self.switched_in:  # no longer in the served bundle: marked again, to teach or unmark
            r.taught = False
        self.switched_in = []
        return new

    def _switch_to(self, target: Path):
        link = self.source.path
        flip = os.path.islink(link)
        before = Path(os.path.realpath(link))
        with self.lock:
            try:
                new = self.source.switch_to(target, before_use=(lambda: flip_link(link, target)) if flip else None,
                                            follow=link if flip else target)
            except (BundleError, ValueError, OSError) as e:
                raise ActionRefused(f"bundle {target.name} refused ({e}); still serving "
                                    f"{self.source.predictor.bundle.bundle_id}", status=422) from None
        self.previous = before
        self.on_switch(new)
        return new


def flip_link(link: Path, target: Path) -> None:
    """Point the symbolic link ``link`` at ``target`` atomically (a new link renamed over it)."""
    rel = os.path.relpath(os.path.realpath(target), os.path.dirname(os.path.abspath(link)))
    tmp = link.with_name(f".{link.name}.switch-{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(rel, tmp)
    os.replace(tmp, link)
