"""The results database: one DuckDB file per study, `results/<study>/rlrs.duckdb`.

Exactly one writer, `rlrs collect` (`ingest`), fills it from finished run
directories (rlrs.rundir) and the study's plan.json, in ONE transaction,
and computes the analysis views in that same transaction. Everything else
(`rlrs query`, the analysis, the report) opens it read-only; `rlrs query`
also without any access to the file system.

    schema    tables, columns (documented with COMMENT ON), views, the version
    connect   connections: read-write, read-only, and `rlrs query`'s sandbox
    rundirs   one run directory -> one checked `runs` row
    ingest    the writer
"""

from rlrs.db.connect import DatabaseError, connect, query_connection, read_frame
from rlrs.db.ingest import IngestResult, ingest, select_results, tune_results
from rlrs.db.rundirs import Skipped
from rlrs.db.schema import SCHEMA_VERSION, has_table

__all__ = [
    "SCHEMA_VERSION",
    "DatabaseError",
    "IngestResult",
    "Skipped",
    "connect",
    "has_table",
    "ingest",
    "query_connection",
    "read_frame",
    "select_results",
    "tune_results",
]
