"""A refused study or config is refused in one line: the field and what is
allowed, exit code 2, no Python traceback, nothing created."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SMOKE = Path(__file__).resolve().parent.parent / "workflow" / "configs" / "smoke.yaml"


def rlrs(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rlrs", *args], cwd=cwd, capture_output=True, text=True)


@pytest.mark.parametrize("command", ["plan", "status", "tune"])
def test_a_refused_study_prints_only_the_error_line(tmp_path, command):
    study = tmp_path / "bad.yaml"
    study.write_text(
        SMOKE.read_text().replace("optim: {lr: 0.048}", "optim: {lr: -0.003}")
        + "tune: {sizes: [tiny], arms: {baseline: global}, seed: 7, max_runs: 5}\n"
    )
    done = rlrs(command, str(study), cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
    assert "run config field optim.lr: -0.003 is not valid: expected number > 0" in done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no results/ folder


def test_a_refused_run_config_prints_only_the_error_line(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("optim: {lr: -1}\n")
    done = rlrs("train", str(config), "--out", str(tmp_path / "run"), cwd=tmp_path)
    assert (done.returncode, done.stderr) == (
        2,
        "rlrs train: bad config: optim.lr: -1 is not valid: expected number > 0\n",
    )
    assert not (tmp_path / "run").exists()
