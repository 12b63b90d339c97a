"""The study's lr rule (rlrs.study.lr_rules): the base lr of every (size,
arm), the centre of its lr grids, the scaling sweep's lr, and the rule's bad
input refused by name."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rlrs import tags
from rlrs.errors import ConfigError
from rlrs.study import check_study, expand
from rlrs.study.lr_rules import joint_moe_lr
from rlrs.study.selection import SelectState, cells, select_digest

SMOKE = Path(__file__).resolve().parent.parent / "workflow" / "configs" / "smoke.yaml"
TINY = {"n_layers": 1, "n_heads": 2}
STUDY = {
    "study": "rules",
    "defaults": {"optim": {"lr": 0.01}, "train": {"steps": 20}},
    "sizes": {
        "sp16": {"d_model": 16, **TINY},
        "sp32": {"d_model": 32, **TINY},
        "mup16": {"d_model": 16, **TINY, "parametrization": "mup", "base_d_model": 16},
        "mup32": {"d_model": 32, **TINY, "parametrization": "mup", "base_d_model": 16},
        "moe16": {"d_model": 16, **TINY, "moe": {"n_experts": 8}},
    },
    "arms": {"baseline": {}, "rlrs": {"multipliers": {"embedding": {"start": 5.0, "end": 0.667}}}},
    "seeds": [0],
    "sweeps": {"lr": {"factors": [0.5, 2.0]}},
}
# Active non-embedding parameters of d16 x 1 layer: attention 4 * 16^2, SwiGLU 3 * 16 * 64
# (one expert's in the MoE, plus the router 16 * 8), three norms of 16.
N_DENSE16 = 4 * 16**2 + 3 * 16 * 64 + 3 * 16  # 4144
N_MOE16 = N_DENSE16 + 16 * 8  # 4272
LR_DENSE16 = 5.17154976648  # exp(8.39 - 0.81 ln 4144), 12 digits (run ids)
LR_MOE16 = 3.00017714801  # exp(8.39 - 0.81 ln 4272 - 0.25 ln 8)


def study(**changes) -> dict:
    """STUDY with fields set (`block__key=value`)."""
    from test_stages import _with

    return _with(**changes)(copy.deepcopy(STUDY))


def lrs(requests, sweep: str) -> dict:
    """(size, arm) -> sorted lrs of one sweep's runs."""
    out: dict = {}
    for _, cfg, lb in requests:
        if lb["sweep"] == sweep:
            out.setdefault((lb["size"], lb["arm"]), set()).add(cfg["optim"]["lr"])
    return {k: sorted(v) for k, v in out.items()}


def test_the_joint_moe_rule_gives_the_papers_values():
    # arXiv 2502.05172, Eq. 8, as shared/spec/scaling-laws.md prints it: N = 1e8 -> 1.46e-3 (E = 1), 8.7e-4 (E = 8)
    assert joint_moe_lr(1e8, 1) == pytest.approx(1.4579099607743352e-3, rel=1e-12)
    assert (f"{joint_moe_lr(1e8, 1):.3g}", f"{joint_moe_lr(1e8, 8):.2g}") == ("0.00146", "0.00087")
    assert joint_moe_lr(1e8, 8) / joint_moe_lr(1e8, 1) == pytest.approx(8**-0.25, rel=1e-12)
    assert joint_moe_lr(2e8, 1) / joint_moe_lr(1e8, 1) == pytest.approx(2**-0.81, rel=1e-12)
    assert float(f"{joint_moe_lr(N_DENSE16, 1):.12g}") == LR_DENSE16
    assert float(f"{joint_moe_lr(N_MOE16, 8):.12g}") == LR_MOE16


def test_joint_moe_sets_every_runs_lr_and_centres_the_grid_on_it():
    requests = expand(study(lr_rule="joint_moe"))
    main, grid = lrs(requests, tags.MAIN), lrs(requests, tags.LR)
    for arm in ("baseline", "rlrs"):  # the study's own lr (0.01) is not used; both arms get the rule's
        assert main[("sp16", arm)] == main[("mup16", arm)] == [LR_DENSE16]
        assert main[("moe16", arm)] == [LR_MOE16]
        assert grid[("sp16", arm)] == [2.58577488324, LR_DENSE16, 10.343099533]
        assert grid[("moe16", arm)] == [1.50008857401, LR_MOE16, 6.00035429602]
    # the parameters the rule read are those the trainer counts
    n = {lb["size"]: cfg for _, cfg, lb in requests}
    from rlrs.model import param_counts

    assert param_counts(n["sp16"]["model"])["params_active_nonembedding"] == N_DENSE16
    assert param_counts(n["moe16"]["model"])["params_active_nonembedding"] == N_MOE16


def test_a_staged_studys_selection_grids_are_centred_on_the_rule():
    smoke = yaml.safe_load(SMOKE.read_text()) | {"study": "staged", "lr_rule": "joint_moe"}
    (base, rlrs) = cells(check_study(smoke))
    # smoke's d16 x 1 at seq_len 32: the same N as above; the file's lr 0.048 is not used
    assert (base.centre_lr, rlrs.centre_lr) == (LR_DENSE16, LR_DENSE16)
    assert base.grid == [2.58577488324, LR_DENSE16, 10.343099533]
    plain = yaml.safe_load(SMOKE.read_text()) | {"study": "staged"}
    assert cells(check_study(plain))[0].grid == [0.024, 0.048, 0.096]
    # the rule is part of the selection's definition (a params trigger of the select step)
    assert select_digest(smoke) != select_digest(plain)


def test_mup_runs_every_width_at_its_base_sizes_lr():
    # each line's base: sp -> its narrowest width (sp16), mup -> base_d_model (mup16); moe16 is its own
    s = study(
        lr_rule="mup",
        arms__baseline__per_size={"sp16": {"optim": {"lr": 0.02}}, "mup16": {"optim": {"lr": 0.03}}},
    )
    main = lrs(expand(s), tags.MAIN)
    assert (main[("sp16", "baseline")], main[("sp32", "baseline")]) == ([0.02], [0.02])
    assert (main[("mup16", "baseline")], main[("mup32", "baseline")]) == ([0.03], [0.03])
    assert main[("moe16", "baseline")] == [0.01]
    assert main[("sp32", "rlrs")] == main[("mup32", "rlrs")] == [0.01]
    assert lrs(expand(s), tags.LR)[("mup32", "baseline")] == [0.015, 0.03, 0.06]
    # under the default rule each size keeps its own lr
    plain = lrs(expand(study(arms__baseline__per_size={"sp16": {"optim": {"lr": 0.02}}})), tags.MAIN)
    assert (plain[("sp16", "baseline")], plain[("sp32", "baseline")]) == ([0.02], [0.01])


def test_mup_takes_the_base_at_the_same_depth():
    s = study(lr_rule="mup")
    s["sizes"] = {
        "a16x1": {"d_model": 16, **TINY},
        "a16x2": {"d_model": 16, "n_layers": 2, "n_heads": 2},
        "a32x2": {"d_model": 32, "n_layers": 2, "n_heads": 2},
    }
    s["arms"] = {"baseline": {"per_size": {"a16x1": {"optim": {"lr": 0.02}}, "a16x2": {"optim": {"lr": 0.04}}}}}
    assert lrs(expand(s), tags.MAIN)[("a32x2", "baseline")] == [0.04]


BAD = {
    "unknown rule": (study(lr_rule="fast"), "lr_rule: 'fast' is not allowed; allowed: study, mup, joint_moe"),
    "absolute grid": (
        study(lr_rule="mup", sweeps={"lr": {"values": [0.01, 0.02]}}),
        "sweeps.lr.values: lr_rule mup centres the lr grid on the rule's lr at each size; allowed: factors, "
        "or lr_rule: study",
    ),
    "per-size lr under joint_moe": (
        study(lr_rule="joint_moe", sizes__sp32__overrides={"optim": {"lr": 0.02}}),
        "sizes.sp32.overrides.optim.lr: lr_rule joint_moe sets every size's lr by its formula, so this lr would "
        "be ignored; allowed: leave it out, or lr_rule: study",
    ),
    "tuned lr under joint_moe": (
        study(lr_rule="joint_moe", tune={"sizes": ["sp16"], "arms": {"baseline": "global"}}),
        "tune.parameters: lr_rule joint_moe sets every size's lr by its formula, so a tuned lr would be ignored; "
        "allowed: list the parameters to tune without lr, or lr_rule: study",
    ),
    "per-size lr away from the base": (
        study(lr_rule="mup", arms__rlrs__per_size={"mup32": {"optim": {"lr": 0.02}}}),
        "arms.rlrs.per_size.mup32.optim.lr: lr_rule mup runs 'mup32' at the lr of its base size 'mup16', so "
        "this lr would be ignored; allowed: set it at 'mup16', or lr_rule: study",
    ),
    "no base size": (
        study(lr_rule="mup", sizes__mup32__base_d_model=8),
        "lr_rule: mup: 'mup32' has base_d_model 8, but none of the dense mup sizes is that wide (mup16 "
        "(d_model 16), mup32 (d_model 32)); allowed: add the base size, or lr_rule: study",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_lr_rule_is_refused_by_name(case):
    bad, message = BAD[case]
    with pytest.raises(ConfigError) as e:
        expand(bad)
    assert str(e.value) == message


def test_a_bad_lr_rule_is_one_line_from_the_cli(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(SMOKE.read_text() + "lr_rule: joint-moe\n")
    done = subprocess.run(
        [sys.executable, "-m", "rlrs", "plan", str(path)], cwd=tmp_path, capture_output=True, text=True
    )
    assert (done.returncode, done.stderr.count("\n"), "Traceback" in done.stderr) == (2, 1, False)
    assert done.stderr.endswith("lr_rule: 'joint-moe' is not allowed; allowed: study, mup, joint_moe\n")


def _scaling(s: dict) -> dict:
    """(size, arm, n_experts) -> lrs of the scaling runs."""
    out: dict = {}
    for _, cfg, lb in expand(s[0], select_state=s[1]) if isinstance(s, tuple) else expand(s):
        if lb["sweep"] == tags.SCALING:
            e = (cfg["model"]["moe"] or {}).get("n_experts")
            out.setdefault((lb["size"], lb["arm"], e), set()).add(cfg["optim"]["lr"])
    return {k: sorted(v) for k, v in out.items()}


def test_a_staged_scaling_sweep_runs_at_the_chosen_lr_else_the_rules():
    smoke = yaml.safe_load(SMOKE.read_text()) | {"study": "staged"}
    smoke["sizes"]["small"] = {"d_model": 24, "n_layers": 1, "n_heads": 2}
    smoke["sweeps"] |= {"lr": smoke["sweeps"]["lr"] | {"sizes": ["tiny"]}, "scaling": {"steps": [20, 40]}}
    chosen = {("tiny", "baseline"): 0.096, ("tiny", "rlrs"): 0.024}
    got = _scaling((check_study(smoke), SelectState(chosen=chosen)))
    assert got == {
        ("tiny", "baseline", None): [0.096],
        ("tiny", "rlrs", None): [0.024],
        ("small", "baseline", None): [0.048],  # no selection there: the rule's (study: the arm's lr)
        ("small", "rlrs", None): [0.048],
    }


def test_scaling_under_joint_moe_gives_each_expert_count_its_lr():
    s = study(lr_rule="joint_moe", sweeps={"scaling": {"sizes": ["moe16"], "steps": [20], "experts": [4, 8]}})
    assert _scaling(s) == {
        ("moe16", arm, e): [lr] for arm in ("baseline", "rlrs") for e, lr in ((4, 3.6117224035), (8, LR_MOE16))
    }
    # the default rule: the arm's lr at that size for every expert count, as before
    plain = study(sweeps={"scaling": {"sizes": ["moe16"], "steps": [20], "experts": [4, 8]}})
    assert set(map(tuple, _scaling(plain).values())) == {(0.01,)}


def test_shipped_mup_cpu_study_and_its_plan(capsys, monkeypatch, tmp_path):
    """mup-cpu: dense and MoE (8 experts, top-1, capacity 1.25) at 4 widths over 8x, sp and muP,
    baseline and RLRS (study-cpu's tables), staged and bracketed, 3 reported seeds, ~3 CPU-hours at most
    by the FLOP model (no finished runs: a calibrated plan depends on what has run, and where)."""
    monkeypatch.setenv("RLRS_RESULTS", str(tmp_path))
    import re

    from rlrs.study import load_study

    from _cli_fixtures import cli_plan

    configs = SMOKE.parent
    path = configs / "mup-cpu.yaml"
    study = load_study(path)
    cpu = load_study(configs / "study-cpu.yaml")
    assert study["arms"]["rlrs"] == cpu["arms"]["rlrs"] and study["lr_rule"] == "mup"
    assert len(study["seeds"]) >= 3 and study["selection_seeds"] and study["sweeps"]["lr"]["bracket"]
    state = SelectState(chosen={(c.size, c.arm): c.centre_lr for c in cells(study)})
    assert {c.centre_lr for c in cells(study)} == {0.01}  # the base model's lr at every width
    lines: dict = {}
    for _, cfg, lb in expand(study, select_state=state):
        m = cfg["model"]
        moe = m["moe"]
        assert moe is None or (moe["n_experts"], moe["top_k"], moe["capacity_factor"]) == (8, 1, 1.25)
        key = ("moe" if moe else "dense", m.get("parametrization", "sp"), lb["arm"])
        lines.setdefault(key, set()).add((m["d_model"], m["n_layers"], m["n_heads"], m.get("base_d_model")))
    assert set(lines) == {(f, p, a) for f in ("dense", "moe") for p in ("sp", "mup") for a in ("baseline", "rlrs")}
    for (_, par, _), shapes in lines.items():
        widths = sorted(w for w, _, _, _ in shapes)
        assert len(widths) >= 4 and widths[-1] / widths[0] >= 8
        assert {(L, h) for _, L, h, _ in shapes} == {(2, 2)}  # fixed depth, muP keeps the heads
        assert {b for *_, b in shapes} == ({16} if par == "mup" else {None})
    assert cli_plan(path) == 0
    out = capsys.readouterr().out
    value, unit = re.search(r"estimated CPU time: ([\d.]+) (min|h)", out).groups()
    minutes = float(value) * (60 if unit == "h" else 1)
    # The issue's ~3 CPU-hours, the worst case of extra lr points included (the FLOP model: no runs here)
    assert minutes <= 180 and "selection                                   96 runs + up to 128 beyond" in out
