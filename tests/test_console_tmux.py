"""The real `infermesh-console` program in a real terminal (tmux), against the real API: it
starts, switches views by name and shows the fleet."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from tests.fixtures_api import ApiServer
from tests.test_console_api import Agents
from tests.test_console_api import agents as agents  # the fixture

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed")
PROGRAM = Path(sys.executable).parent / "infermesh-console"


def tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], check=True, capture_output=True, text=True, timeout=10
    ).stdout


def screen_until(session: str, wanted: list[str], timeout: float = 30) -> str:
    """The pane's text once it shows every string in `wanted`; fails with the last text."""
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = tmux("capture-pane", "-p", "-t", session)
        if all(w in text for w in wanted):
            return text
        time.sleep(0.2)
    raise AssertionError(f"the console never showed {wanted}; it showed:\n{text}")


async def test_the_program_in_tmux(
    api: ApiServer,
    project: str,
    agents: Agents,
    tmp_path: Path,
) -> None:
    await agents.report("tmux-node-1", 42.0)
    session = f"infermesh-console-test-{uuid.uuid4().hex[:8]}"
    command = (  # without the COLUMNS/LINES pytest may set: the pane's size is the truth
        f"env -u COLUMNS -u LINES INFERMESH_HOME={tmp_path} {PROGRAM} --api {api.url} "
        f"--token {api.token} --project {project}"
    )
    tmux("new-session", "-d", "-s", session, "-x", "160", "-y", "45", command)
    try:
        screen_until(session, ["tmux-node-1", "UTIL"])
        tmux("send-keys", "-t", session, "-l", ":ep")
        tmux("send-keys", "-t", session, "Enter")
        screen_until(session, ["<Endpoints>", "ROLLOUT"])
        tmux("send-keys", "-t", session, "-l", ":no")
        tmux("send-keys", "-t", session, "Enter")
        text = screen_until(session, ["<Nodes>", "tmux-node-1"])
        for header in ("NAME", "DOMAIN", "CLASS", "UTIL", "VRAM", "TEMP", "STATUS"):
            assert header in text
        assert "42%" in text and "live" in text
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=10)
