"""`snakemake --lint` on every shipped study reports nothing but the one
documented exception: no per-rule conda environment or container (the
workflow runs in the pinned venv of scripts/setup.sh; environment.yml holds
the same pins for conda users). Documented in the Snakefile's header and in
README.md."""

from __future__ import annotations

import re

import pytest
import yaml
from test_workflow import CONFIGS, snakemake

# The exception, as Snakemake words it.
NO_SOFTWARE_ENV = "Specify a conda environment or container for each rule."
# The rules that run a shell command (the only ones that lint asks an environment of).
SHELL_RULES = {"train", "train_batch", "collect", "report"}


def lints(output: str) -> dict[str, set[str]]:
    """Snakemake's plain-text lint report: item ('rule train', 'snakefile
    PATH') -> the titles of its lints. (`--lint json` prints nothing in
    Snakemake 9.27: the format is not passed on.)"""
    found: dict[str, set[str]] = {}
    item = None
    for line in output.splitlines():
        if m := re.match(r"Lints for (rule \w+|snakefile .+?)(?: \(line \d+, .*\))?:$", line):
            item = m.group(1)
            found[item] = set()
        elif item and (m := re.match(r"    \* (.+):$", line)):
            found[item].add(m.group(1))
    return found


@pytest.mark.parametrize("study", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_lint_reports_only_the_documented_exception(study, tmp_path):
    out = snakemake(tmp_path, "--lint", "--configfile", str(CONFIGS / study))
    found = lints(out.stdout + out.stderr)
    doc = yaml.safe_load((CONFIGS / study).read_text())
    stages = {"tune"} & set(doc) | ({"select"} if "selection_seeds" in doc else set())
    # The parser saw Snakemake's report: every shell rule is there, for the exception.
    assert set(found) == {f"rule {r}" for r in SHELL_RULES | stages}, out.stdout + out.stderr
    assert all(titles == {NO_SOFTWARE_ENV} for titles in found.values()), found
    assert out.returncode == 1  # Snakemake's exit code whenever it printed a lint
