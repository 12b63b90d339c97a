"""Connections to a study's database: read-write for the one writer
(`rlrs collect`), read-only for everyone else, and the locked-down
connection of `rlrs query` (no file system access at all)."""

from __future__ import annotations

from pathlib import Path

import duckdb

from rlrs.db.schema import SCHEMA_VERSION, create_schema, has_table

# `rlrs query`: a read-only connection that cannot reach the file system
# (COPY ... TO, ATTACH, INSTALL / LOAD, read_csv('x'), 'file.parquet' are
# refused) and whose settings a query cannot change back.
QUERY_CONFIG = {"enable_external_access": False, "lock_configuration": True}


class DatabaseError(Exception):
    """A clear, one-line problem with the database or the collect/query input."""


def connect(db_path: Path | str, read_only: bool = True) -> duckdb.DuckDBPyConnection:
    """Open the database. Read-only (the default) needs an existing file;
    read-write creates the schema if needed and refuses a newer schema version."""
    db_path = Path(db_path)
    if read_only and not db_path.is_file():
        raise DatabaseError(f"no database at {db_path} (run `rlrs collect` first, or pass --db)")
    if not read_only:
        con = open_rw(db_path)
        try:
            con.execute("BEGIN")
            create_schema(con)
            con.execute("COMMIT")
        except BaseException:
            con.close()
            raise
        return con
    try:
        con = duckdb.connect(str(db_path), read_only=True)
    except duckdb.Error as e:
        raise DatabaseError(f"cannot open {db_path}: {first_line(e)}") from None
    return con


def query_connection(db_path: Path | str) -> duckdb.DuckDBPyConnection:
    """Read-only, without external access, settings locked: `rlrs query`."""
    db_path = Path(db_path)
    if not db_path.is_file():
        raise DatabaseError(f"no database at {db_path} (run `rlrs collect` first, or pass --db)")
    try:
        return duckdb.connect(str(db_path), read_only=True, config=QUERY_CONFIG)
    except duckdb.Error as e:
        raise DatabaseError(f"cannot open {db_path}: {first_line(e)}") from None


def read_frame(db_path: Path | str, sql: str, params: list | None = None, *, sandboxed: bool = False):
    """Run one query read-only and return a polars DataFrame (empty when the
    statement returns no rows). Writes are refused by DuckDB itself; with
    `sandboxed` (rlrs query) so is every access to another file."""
    import polars as pl

    con = query_connection(db_path) if sandboxed else connect(db_path, read_only=True)
    try:
        rel = con.sql(sql, params=params) if params is not None else con.sql(sql)
        return rel.pl() if rel is not None else pl.DataFrame()
    except duckdb.Error as e:
        if isinstance(e, duckdb.PermissionException) or "external access" in str(e).lower():
            raise DatabaseError(
                f"refused: a query cannot read or write files, attach databases or load extensions "
                f"(external access is off); {first_line(e)}"
            ) from None
        if "read-only mode" in str(e):
            raise DatabaseError(
                f"refused: {db_path} is opened read-only; only `rlrs collect` writes it ({first_line(e)})"
            ) from None
        raise DatabaseError(f"query failed: {first_line(e)}") from None
    finally:
        con.close()


def first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def check_version(con: duckdb.DuckDBPyConnection, db_path: Path) -> None:
    if not has_table(con, "schema_version"):
        return
    found = con.execute("SELECT max(version) FROM schema_version").fetchall()[0][0]
    if found is not None and found > SCHEMA_VERSION:
        raise DatabaseError(
            f"{db_path} has schema version {found}, newer than the {SCHEMA_VERSION} this rlrs writes: "
            "upgrade rlrs, or collect into a new --db"
        )
    if found is not None and found < SCHEMA_VERSION:
        # No migrations: the database is derived data, rebuilt from the run directories.
        raise DatabaseError(
            f"{db_path} has schema version {found}, older than the {SCHEMA_VERSION} this rlrs writes: "
            "delete it and collect again (it is rebuilt from the run directories)"
        )


def open_rw(db_path: Path) -> duckdb.DuckDBPyConnection:
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as e:
        raise DatabaseError(f"cannot open {db_path} for writing: {first_line(e)}") from None
    try:
        check_version(con, db_path)
    except BaseException:
        con.close()
        raise
    return con
