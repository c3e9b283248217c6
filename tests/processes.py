"""Child processes of the tests: wait until one serves, or say why it never did."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import httpx


def wait_until_serving(
    process: subprocess.Popen[bytes], url: str, log: Path, what: str, timeout: float = 30
) -> None:
    """Return once `url` answers 200; raise with the log's tail if the process exits first or
    the time runs out (the caller stops the process)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{what} exited with {process.returncode}:\n{log.read_text()[-3000:]}"
            )
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not come up in {timeout:g}s:\n{log.read_text()[-3000:]}")
