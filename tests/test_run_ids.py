"""Run ids are stable: every committed run of the CPU study re-resolves to
the id it was trained under, with the same resolved config (plus the
defaults of operational fields added since it ran)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlrs.config import DEFAULTS, ID_WHEN_SET, OPERATIONAL, resolve, run_id

RUNS = sorted((Path(__file__).resolve().parent.parent / "results" / "study-cpu-v1" / "runs").glob("*/config.json"))


def test_the_committed_study_is_there():
    assert len(RUNS) >= 400


@pytest.mark.parametrize("path", RUNS, ids=[p.parent.name for p in RUNS])
def test_committed_config_resolves_to_its_own_run_id(path):
    doc = json.loads(path.read_text())
    resolved = resolve(doc)
    assert run_id(resolved) == doc["run_id"] == path.parent.name
    expected = {k: v for k, v in doc.items() if k != "run_id"}
    # Operational fields added since the study ran (train.update_size_interval,
    # train.compile, train.parallel) and those in the run id only when set
    # (train.micro_batch_size) take their defaults; any other new field would be missing here.
    for block, keys in OPERATIONAL.items():
        for key in keys:
            expected[block].setdefault(key, DEFAULTS[block][key])
    for name, default in ID_WHEN_SET.items():
        block, key = name.split(".")
        expected[block].setdefault(key, default)
    assert resolved == expected  # otherwise resolving is the identity on a resolved config
