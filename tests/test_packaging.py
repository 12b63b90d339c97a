"""The conda environment, the pip requirements and the package metadata agree."""

import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#")[0].strip()
        if not line or line.startswith("-"):
            continue
        req = Requirement(line)
        (spec,) = req.specifier
        assert spec.operator == "==", f"{line} is not pinned"
        out[req.name.lower()] = spec.version
    return out


def test_environment_yml_matches_requirements():
    pip = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    (pip_block,) = [d["pip"] for d in env["dependencies"] if isinstance(d, dict)]
    conda_pins = _pins([p for p in pip_block if not p.startswith("-e")])
    assert conda_pins == pip
    assert "python=3.11" in env["dependencies"]


def test_pyproject_requires_what_is_pinned_and_pins_torch():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = {Requirement(r).name.lower(): Requirement(r) for r in meta["dependencies"]}
    pins = _pins((ROOT / "requirements.txt").read_text().splitlines())
    assert set(reqs) == set(pins)
    for name, version in pins.items():
        assert reqs[name].specifier.contains(version), f"{name}=={version} outside pyproject's {reqs[name].specifier}"
    # An open torch range would pull a CUDA build on a machine without torch.
    assert str(reqs["torch"].specifier) == "==2.13.0"
    assert meta["scripts"]["rlrs"] == "rlrs.cli:main"
