"""The sweeps of a study and the tags each writes into its runs' labels
(`meta.tags` of config.json, `tags` of plan.json and of the `plan` table).

Expansion (rlrs.study.expand) builds every tag dict through the functions
below, and the analysis (rlrs.analysis) reads exactly the keys in
TAG_COLUMNS: there is no tag that one side writes and the other ignores, or
reads and nothing writes.

    sweep          run's arm label             tags
    main           the arm                     {}
    lr             the arm                     lr, lr_factor (+ stage: select for the
                                               selection runs of a staged study)
    ladder         the arm (the baseline)      length_factor, steps
    usweep         the scaled arm              component, which, factor
    removal        the arm a component is      component
                   reset in
    contribution   the `into` arm (baseline)   component, source_arm (the arm whose
                                               value of the component was added)
    tune           the searched arm            pass, parameter, factor, step
    scaling        the arm                     tokens (the run's training tokens, its
                                               budget D for the scaling-law fits)

The reference a derived run is compared with is its own arm label, at the
same size, lr and length: the scaled arm for a U-sweep, the arm itself for a
removal, the `into` arm for a contribution. A contribution's `source_arm`
says whose values were added, so two relative arms never mix.
"""

from __future__ import annotations

MAIN, LR, LADDER, USWEEP, REMOVAL, CONTRIBUTION, TUNE = (
    "main",
    "lr",
    "ladder",
    "usweep",
    "removal",
    "contribution",
    "tune",
)
SCALING = "scaling"
SWEEPS = (TUNE, MAIN, LR, LADDER, USWEEP, REMOVAL, CONTRIBUTION, SCALING)  # the order `rlrs plan` lists them in
LR_SWEEPS = (MAIN, LR)  # sweeps whose runs compete for an arm's best lr at its main length
LENGTH_SWEEPS = (MAIN, LR, LADDER)  # sweeps that give the baseline's L(T) points
ABLATIONS = (REMOVAL, CONTRIBUTION)

# Tag key -> SQL type, as the analysis unpacks them from the tags JSON.
TAG_COLUMNS = {
    "lr_factor": "DOUBLE",
    "length_factor": "DOUBLE",
    "component": "VARCHAR",
    "which": "VARCHAR",
    "factor": "DOUBLE",
    "source_arm": "VARCHAR",
    "stage": "VARCHAR",
    "tokens": "BIGINT",
}


def lr(lr: float, factor: float) -> dict:
    return {"lr": lr, "lr_factor": factor}


SELECT = "select"  # the `stage` tag of a staged study's selection runs (sweep lr)


def select(lr: float, factor: float) -> dict:
    """A stage-1 selection run (sweep lr) of a staged study."""
    return {"lr": lr, "lr_factor": factor, "stage": SELECT}


def ladder(factor: float, steps: int) -> dict:
    return {"length_factor": factor, "steps": steps}


def usweep(component: str, which: str, factor: float) -> dict:
    return {"component": component, "which": which, "factor": factor}


def removal(component: str) -> dict:
    return {"component": component}


def contribution(component: str, source_arm: str) -> dict:
    return {"component": component, "source_arm": source_arm}


def tune(pass_: int, parameter: str | None, factor: float | None, step: int | None = None) -> dict:
    tags = {"pass": pass_, "parameter": parameter, "factor": factor}
    return tags if step is None else tags | {"step": step}


def scaling(tokens: int) -> dict:
    return {"tokens": tokens}
