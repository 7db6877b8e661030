"""Aravis' fake GigE Vision camera (``arv-fake-gv-camera-0.8``, Debian's aravis-tools) on loopback:
the real camera double the genicam tests and the camera benchmark drive. Opened by address
(``genicam://127.0.0.1``), so no discovery broadcast leaves the machine."""

from __future__ import annotations

import shutil
import subprocess
import time

ADDRESS = "127.0.0.1"
URL = f"genicam://{ADDRESS}"
BINARY = "arv-fake-gv-camera-0.8"


def missing() -> str | None:
    """Why the fake camera cannot run here, or None."""
    from runtime.line.sources.genicam import available

    ok, why = available()
    if not ok:
        return why
    if shutil.which(BINARY) is None:
        return f"{BINARY} not installed (Debian package aravis-tools; .ci/run installs it)"
    return None


class FakeGvCamera:
    """One fake camera process; ``lost_per_thousand`` drops stream packets (incomplete frames)."""

    def __init__(self, lost_per_thousand: int = 0):
        self.args = [BINARY, "-i", ADDRESS] + (["-r", str(lost_per_thousand)] if lost_per_thousand else [])
        self.proc: subprocess.Popen | None = None

    def start(self) -> "FakeGvCamera":
        self.proc = subprocess.Popen(self.args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.3)  # it binds its GVCP port at once
        if self.proc.poll() is not None:
            raise RuntimeError(f"{BINARY} exited at once (code {self.proc.returncode}): is another one running "
                               f"on {ADDRESS}?")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> "FakeGvCamera":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.kill()
