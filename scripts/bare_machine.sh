#!/usr/bin/env bash
# The README's two commands as on a bare machine, timed: a clean clone of this checkout's HEAD in a
# temporary folder, `pkg-config` shadowed by a stub that fails (as if absent), PIP_ONLY_BINARY=:all:
# (pip may build nothing from source), no PyGObject (so no Aravis through GObject introspection),
# then `make demo` and `make test`. Writes its log and timings under DEST (default /tmp/patchcore-bare)
# and the section "Bare machine" of BENCHMARKS.md.
#
#   scripts/bare_machine.sh [DEST]        # SKIP_TEST=1: make demo only
set -euo pipefail
REPO="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-/tmp/patchcore-bare}"
rm -rf "$DEST"
mkdir -p "$DEST/bin"
git clone --quiet "$REPO" "$DEST/clone"
printf '#!/bin/sh\necho "pkg-config: hidden on this bare-machine run" >&2\nexit 127\n' > "$DEST/bin/pkg-config"
chmod +x "$DEST/bin/pkg-config"
export PATH="$DEST/bin:$PATH" PIP_ONLY_BINARY=":all:"
unset GI_TYPELIB_PATH
cd "$DEST/clone"
t0=$(date +%s)
make demo > "$DEST/demo.log" 2>&1
t1=$(date +%s)
test -s results/demo/summary.md
echo "make demo: ok in $((t1 - t0)) s (install included); results/demo/summary.md written" | tee "$DEST/timings.txt"
if [ -z "${SKIP_TEST:-}" ]; then
    # CI unset: a missing system capability skips (with its reason) instead of failing
    env -u CI make test > "$DEST/test.log" 2>&1
    t2=$(date +%s)
    echo "make test: ok in $((t2 - t1)) s: $(tail -1 "$DEST/test.log")" | tee -a "$DEST/timings.txt"
    echo "skips: $(grep -c 'unavailable' "$DEST/test.log" || true) capability lines in the log" | tee -a "$DEST/timings.txt"
fi
status=$(git status --porcelain)
echo "git status after the run: ${status:-clean}" | tee -a "$DEST/timings.txt"
python3 "$REPO/scripts/bare_machine_report.py" "$DEST"   # the section "Bare machine" of BENCHMARKS.md
