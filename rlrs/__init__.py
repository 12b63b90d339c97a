"""rlrs: scaling studies of decoupled relative learning-rate schedules."""

__version__ = "0.1.0"
