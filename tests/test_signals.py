"""Stopping a command from outside: SIGTERM and Ctrl+C end `fer-ray score` with its own exit
status and resume hint, and leave none of Ray's processes behind (the real command, in a
process group of its own, as a terminal or a scheduler would stop it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from datagen import face_pixels, write_image

FER_RAY = str(Path(sys.executable).with_name("fer-ray"))
ENV = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_ADDRESS": ""}


def _group(pgid: int) -> list[str]:
    rows = subprocess.run(["ps", "-eo", "pgid=,pid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [row for row in rows if row.split()[0] == str(pgid)]


@pytest.mark.ray
@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig, to_group, status, said", [
    (signal.SIGTERM, False, 143, "terminated (SIGTERM)"),  # `kill PID`, a scheduler, a container stopping
    (signal.SIGINT, True, 130, "interrupted (Ctrl+C)"),  # a terminal's Ctrl+C reaches the whole group
])
def test_a_stopped_score_exits_with_its_status_and_hint_and_leaves_no_ray_process(sig, to_group, status, said,
                                                                                tmp_path):
    for i, face in enumerate(face_pixels(3000)):
        write_image(tmp_path / "crops" / f"{i // 500}" / f"{i:05d}.png", face)
    proc = subprocess.Popen([FER_RAY, "score", "--input", str(tmp_path / "crops"), "--output",
                             str(tmp_path / "scores.parquet"), "--faces", "none", "--batch-size", "8"],
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:  # the model actors are starting: Ray and all of its processes are up
        lines.append(line)
        if "actor(s)" in line:
            break
    assert proc.poll() is None, "".join(lines)
    time.sleep(2)
    (os.killpg if to_group else os.kill)(proc.pid, sig)
    out = "".join(lines) + proc.communicate(timeout=120)[0]
    assert proc.returncode == status, out
    assert f"fer-ray score: {said}; rerun the same command to score only the files not yet scored" in out
    assert "received at time" not in out and "Traceback" not in out  # Ray's C++ stack dump, Python's
    deadline = time.time() + 20
    while _group(proc.pid) and time.time() < deadline:
        time.sleep(0.5)
    assert _group(proc.pid) == []
