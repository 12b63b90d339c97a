"""The documentation of every column of the five scaling views
(scaling_points, scaling_fit, compute_multiplier, scaling_frontier,
scaling_iso_loss; rlrs.analysis.scaling.study makes their frames), stored in
the database as `COMMENT ON COLUMN`."""

from __future__ import annotations

from rlrs.analysis import health

FIT_KEY = {
    "study": "study name",
    "law": "chinchilla | fine_grained | joint_moe",
    "family": "dense | moe: the model family the fit's runs belong to",
    "arm": "the arm whose runs were fitted",
    "n_kind": "the parameter count N the law uses: total | active | nonembedding | active_nonembedding",
    "experts": "E: the number of experts the row is at (fixed for chinchilla and fine_grained); NULL for dense",
    "granularity": "G: the granularity the row is at (fixed for chinchilla and joint_moe); NULL for dense",
}
COLUMN_DOCS = {
    "scaling_points": FIT_KEY
    | {
        "run_id": "the run (a point of the fit)",
        "n_params": "N: the run's parameter count of kind n_kind",
        "tokens": "D: training tokens",
        "tokens_per_param": "D / N",
        "compute": "C = 6 N D (FLOPs, with N of kind n_kind)",
        "loss": "final eval loss (nats/token)",
        "fitted": "the fitted law's loss at the point",
        "held_out": "in the extrapolation set (the fit's largest-compute runs): not fitted",
        "size": "the run's size (its health checks are its (family, size, arm) cell's)",
    }
    | health.CHECK_DOCS,
    "scaling_fit": FIT_KEY
    | {
        "parameter": "a coefficient, a fixed setting (E_start, E_max: no interval) or a derived quantity "
        "(m, mu, n, nu, N_opt_exponent, D_opt_exponent; N_opt, D_opt, L_opt at C=the extrapolation budget)",
        "value": "its value (fit to the training points)",
        "ci_low": "bootstrap percentile interval over runs, low end (NULL without resamples, or where more "
        "than the tail's share of them leave it undefined: each counts as beyond both ends)",
        "ci_high": "high end",
        "rmse_train": "RMSE of log L over the training points",
        "rmse_heldout": "RMSE of log L over the held-out points (NULL without any)",
        "n_points": "training points",
        "n_heldout": "held-out points",
        "huber_delta": "delta of the summed Huber objective",
    }
    | health.CHECK_DOCS,
    "compute_multiplier": FIT_KEY
    | {
        "arm": "the arm compared with the baseline",
        "baseline": "the baseline arm",
        "compute": "the baseline's compute C (FLOPs)",
        "multiplier": "C / C_arm: the baseline's compute over the arm's to reach the baseline's frontier loss "
        "at C (0: the arm never reaches it)",
        "ci_low": "paired bootstrap percentile interval, low end (undefined resamples count as beyond both ends; "
        "NULL where more than the tail's share are)",
        "ci_high": "high end",
        "extrapolated": "C lies beyond either fit's largest training compute",
    }
    | health.CHECK_DOCS,
    "scaling_frontier": FIT_KEY
    | {
        "compute": "compute C (FLOPs)",
        "loss": "L*(C): the fitted loss at the compute-optimal allocation",
        "loss_low": "its bootstrap interval, low end",
        "loss_high": "high end",
        "n_opt": "compute-optimal N at C",
        "d_opt": "compute-optimal D at C",
        "extrapolated": "C lies beyond the fit's largest training compute",
    },
    "scaling_iso_loss": FIT_KEY
    | {
        "level": "the loss of the iso-loss line",
        "n_params": "N (of kind n_kind)",
        "tokens": "D: the tokens that reach `level` at N under the fitted law",
    },
}
