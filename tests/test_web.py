"""The web extension's pure logic (``web/playback.js``), through ``node --test`` when Node.js is here."""

import shutil
import subprocess
from pathlib import Path

import pytest

WEB_TESTS = Path(__file__).resolve().parent / "web"


@pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is not installed")
def test_the_playback_clock():
    done = subprocess.run(["node", "--test", str(WEB_TESTS)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# fail 0" in done.stdout and "# pass 0" not in done.stdout
