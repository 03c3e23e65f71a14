"""The decision writer's statements, compiled once and run on the DB-API cursor.

A decision batch runs seven statements. Through ``Connection.execute`` each one pays some 40-60 µs
of SQLAlchemy's per-execution work (cache key, parameter processing, expanding IN lists,
result setup, events): at one call at a time that was a third of the writer's CPU. Here a
Core statement is compiled once per dialect (the SQL is still SQLAlchemy's), its IN lists are
expanded once per list length, and each execution only builds the parameter tuple, applies
the types' bind processors and calls the driver inside the caller's transaction. Driver
errors come back as SQLAlchemy's (``DBAPIError``), and a lost connection is invalidated, as
``Connection.execute`` would do: the writer's fail-closed handling stays the same.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Executable
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql.compiler import SQLCompiler

Processor = Callable[[Any], Any] | None
#: One parameter of the DB-API call: (value's name, index in its IN list or None, processor,
#: its name in the SQL).
Slot = tuple[str, int | None, Processor, str]


class HotStatement:
    """One Core statement for one dialect: :meth:`execute` / :meth:`executemany` on a
    :class:`Connection` inside its transaction.

    ``column_keys``: for an INSERT, the columns every row gives (the compiled statement
    names exactly those, plus columns with a default, filled in here from the default)."""

    def __init__(self, statement: Executable, dialect: Dialect,
                 column_keys: Sequence[str] | None = None):
        compiled = statement.compile(dialect=dialect, column_keys=list(column_keys or ()) or None)
        assert isinstance(compiled, SQLCompiler)
        self._compiled = compiled
        self._dialect = dialect
        self._positional = compiled.positional
        self._processors: dict[str, Processor] = dict(compiled._bind_processors)
        # Values the statement carries itself (literals, defaults), under the given ones.
        self._constants: dict[str, Any] = {
            name: bind.effective_value for name, bind in compiled.binds.items()
            if not bind.required and bind.effective_value is not None}
        self._computed: list[tuple[str, Callable[[Any], Any]]] = []  # defaults made per row
        table = getattr(statement, "table", None)
        if column_keys is not None and table is not None and getattr(statement, "is_insert", False):
            for column in table.c:
                default = column.default
                if column.key in column_keys or default is None or column.key not in compiled.binds:
                    continue
                if default.is_scalar:
                    self._constants[column.key] = default.arg
                elif default.is_callable:  # SQLAlchemy wraps it to take an execution context
                    self._computed.append((column.key, default.arg))
        self._expanding = tuple(sorted(name for name, bind in compiled.binds.items()
                                       if bind.expanding))
        self._plans: dict[tuple[int, ...], tuple[str, list[Slot]]] = {}
        self._returns_rows = bool(getattr(statement, "is_select", False)
                                  or getattr(statement, "_returning", ()))
        # A SELECT's columns, or an INSERT/UPDATE's RETURNING columns
        columns = statement.exported_columns if self._returns_rows else None  # type: ignore[attr-defined]
        results = ([c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns]
                   if columns is not None else [])
        self._results: list[Processor] = results if any(results) else []  # [] when none applies

    # -- planning --------------------------------------------------------------------------

    def _plan(self, values: Mapping[str, Any]) -> tuple[str, list[Slot]]:
        key = tuple(len(values[name]) for name in self._expanding)
        plan = self._plans.get(key)
        if plan is None:
            state = self._compiled.construct_expanded_state(
                {name: values[name] for name in self._compiled.binds if name in values})
            origin = {expanded: (name, i) for name, names in state.parameter_expansion.items()
                      for i, expanded in enumerate(names)}
            names = state.positiontup if self._positional else list(state.parameters)
            slots: list[Slot] = []
            for name in names or ():
                base, index = origin.get(name, (name, None))
                slots.append((base, index, self._processors.get(base), name))
            plan = self._plans[key] = (state.statement, slots)
        return plan

    def _values(self, given: Mapping[str, Any]) -> dict[str, Any]:
        values = dict(self._constants)
        for name, make in self._computed:
            values[name] = make(None)
        values.update(given)
        return values

    def _bind(self, slots: list[Slot], values: Mapping[str, Any]) -> tuple[Any, ...] | dict[str, Any]:
        bound = []
        for name, index, process, _ in slots:
            value = values[name] if index is None else values[name][index]
            bound.append(process(value) if process is not None and value is not None else value)
        if self._positional:
            return tuple(bound)
        return {key: value for (*_, key), value in zip(slots, bound, strict=True)}

    # -- running ---------------------------------------------------------------------------

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[tuple]:
        """Run once; the rows (result types applied) of a statement that returns rows, else []."""
        return self.start(conn, params)()

    def start(self, conn: Connection,
              params: Mapping[str, Any] | None = None) -> Callable[[], list[tuple]]:
        """Send the statement now; its rows (as :meth:`execute` returns them) when the returned
        function is called. Inside :func:`pipeline` the statement does not wait for the server:
        statements started one after another, then read, take one round trip together (the
        server still runs them in order). Elsewhere it has already run when this returns."""
        values = self._values(params or {})
        sql, slots = self._plan(values)
        bound = self._bind(slots, values)
        cursor = self._send(conn, sql, bound, many=False)

        def rows() -> list[tuple]:
            got = self._fetch(conn, cursor, sql, bound)
            if not self._results:
                return got
            procs = self._results
            return [tuple(p(v) if p is not None else v for p, v in zip(procs, row, strict=True))
                    for row in got]
        return rows

    def executemany(self, conn: Connection, rows: Iterable[Mapping[str, Any]]) -> None:
        """Run once per row (the driver's executemany: one prepared statement, and on
        PostgreSQL one pipeline)."""
        batch = [self._values(r) for r in rows]
        if not batch:
            return
        sql, slots = self._plan(batch[0])
        self._run(conn, sql, [self._bind(slots, v) for v in batch], many=True)

    def _run(self, conn: Connection, sql: str, bound: Any, *, many: bool) -> list[tuple]:
        return self._fetch(conn, self._send(conn, sql, bound, many=many), sql, bound)

    def _send(self, conn: Connection, sql: str, bound: Any, *, many: bool) -> Any:
        """The driver's cursor, with the statement executed (queued, in a pipeline)."""
        cursor = _cursor(conn)
        try:
            if many:
                cursor.executemany(sql, bound)
            else:
                cursor.execute(sql, bound)
        except BaseException as exc:
            error = (_wrapped(conn, exc, sql, bound, cursor)
                     if isinstance(exc, self._dialect.loaded_dbapi.Error) else None)
            self._close(cursor)
            if error is not None:
                raise error from exc
            raise
        return cursor

    def _fetch(self, conn: Connection, cursor: Any, sql: str, bound: Any) -> list[tuple]:
        """The rows of a statement :meth:`_send` ran (only a SELECT is asked for them: in a
        pipeline that waits for the server); then the cursor is kept for the connection's
        next statement, or closed if the statement failed."""
        try:
            rows = cursor.fetchall() if self._returns_rows else []
        except self._dialect.loaded_dbapi.Error as exc:
            self._close(cursor)
            raise _wrapped(conn, exc, sql, bound, cursor) from exc
        except BaseException:
            self._close(cursor)
            raise
        _spare(conn, cursor, done=self._returns_rows)
        return rows

    def _close(self, cursor: Any) -> None:
        with contextlib.suppress(self._dialect.loaded_dbapi.Error):
            cursor.close()


#: Where a pooled connection keeps its spare cursors (``PoolProxiedConnection.info`` lives as
#: long as its DB-API connection: SQLAlchemy clears it when the connection is replaced).
_SPARE = "callwarden.hot.cursors"
#: Cursors whose statements are queued in the pipeline, results not yet in: spare once it syncs.
_QUEUED = "callwarden.hot.queued"
#: A batch's statements in one pipeline, about (the cursors kept for the next batch).
_SPARES = 12


def _cursor(conn: Connection) -> Any:
    """A cursor of ``conn``'s DB-API connection: one a finished statement left, else a new one.
    A psycopg cursor costs some 30 µs to make and close (its adapters map), and a decision
    batch runs nine statements."""
    fairy = conn.connection  # the pooled DB-API connection of this transaction
    dbapi_conn = fairy.dbapi_connection
    spare = fairy.info.get(_SPARE)
    while spare:
        cursor = spare.pop()
        if cursor.connection is dbapi_conn and not getattr(cursor, "closed", False):
            return cursor
    return dbapi_conn.cursor()  # type: ignore[union-attr]


def _spare(conn: Connection, cursor: Any, *, done: bool = True) -> None:
    """Keep ``cursor`` for the next statement on this connection once its statement is done:
    read (``done``), or, inside a :func:`pipeline`, when the pipeline syncs (psycopg hands a
    queued statement's results to its cursor when they arrive)."""
    info = conn.connection.info
    if not done and _pipelined(conn):
        info.setdefault(_QUEUED, []).append(cursor)
        return
    spare = info.setdefault(_SPARE, [])
    if len(spare) < _SPARES:
        spare.append(cursor)
    else:
        with contextlib.suppress(Exception):
            cursor.close()


def _pipelined(conn: Connection) -> bool:
    pgconn = getattr(conn.connection.dbapi_connection, "pgconn", None)
    return bool(pgconn is not None and pgconn.pipeline_status)


def _synced(conn: Connection, ok: bool) -> None:
    """The pipeline synced (``ok``) or failed: its queued statements' cursors are spare, or
    closed."""
    queued = conn.connection.info.pop(_QUEUED, None) or []
    for cursor in queued:
        if ok:
            _spare(conn, cursor)
        else:
            with contextlib.suppress(Exception):
                cursor.close()


def _wrapped(conn: Connection, exc: Exception, sql: str | None, bound: Any,
             cursor: Any = None) -> DBAPIError:
    """A driver error as SQLAlchemy raises it; a lost connection is invalidated (the pool then
    replaces it), as ``Connection.execute`` does."""
    dialect = conn.dialect
    disconnect = dialect.is_disconnect(exc, conn.connection.dbapi_connection, cursor)
    if disconnect:
        conn.invalidate(exc)
    return DBAPIError.instance(sql, bound, exc, dialect.loaded_dbapi.Error,
                               connection_invalidated=disconnect, dialect=dialect)


@contextmanager
def pipeline(conn: Connection) -> Iterator[None]:
    """PostgreSQL: the statements run inside go to the server without waiting for each
    other (psycopg's pipeline mode; a statement whose rows are read waits for what is queued
    before it; leaving the block syncs, which waits for everything). A decision batch is then
    two round trips (:func:`begin`, the callees' locks and the facts read together; the
    writes, the chain's entries, the queued :func:`commit` and the closing sync). SQLite:
    nothing changes. Errors that surface when the pipeline is synced come back as
    ``DBAPIError``."""
    if conn.dialect.name != "postgresql" or not _pipeline_supported():
        yield
        return
    error = conn.dialect.loaded_dbapi.Error
    ok = False
    try:
        with conn.connection.dbapi_connection.pipeline():  # type: ignore[union-attr]
            yield
        ok = True
    except error as exc:
        raise _wrapped(conn, exc, None, None) from exc
    finally:
        _synced(conn, ok)


@lru_cache(maxsize=1)
def _pipeline_supported() -> bool:
    """psycopg's pipeline mode needs libpq 14 or newer (the binary wheels bundle one; a
    ``psycopg[c]`` build against an older system libpq has none): without it, plain round trips."""
    import psycopg

    return bool(psycopg.Pipeline.is_supported())


def explicit_transactions(conn: Connection) -> None:
    """PostgreSQL with pipelines: let :func:`begin` queue a transaction's BEGIN in the
    pipeline with what follows. psycopg's own BEGIN waits for the server (a round trip of
    its own), so the connection goes into autocommit and the transaction is opened and
    closed by statements (:func:`begin`, :func:`commit`); a transaction left open is rolled
    back as usual (the driver's rollback sees it). SQLAlchemy sets the connection back to
    its isolation level when it returns to the pool. Elsewhere nothing changes."""
    if conn.dialect.name == "postgresql" and _pipeline_supported():
        conn.execution_options(isolation_level="AUTOCOMMIT")


def begin(conn: Connection) -> None:
    """Open the transaction on a connection given :func:`explicit_transactions`: queued,
    inside :func:`pipeline`. Elsewhere nothing: the driver opens it with the first statement."""
    if conn.dialect.name != "postgresql":
        return
    dbapi_conn = conn.connection.dbapi_connection
    if not dbapi_conn.autocommit:  # type: ignore[union-attr]
        return
    _control(conn, "BEGIN")


def commit(conn: Connection) -> None:
    """Inside :func:`pipeline` on PostgreSQL: queue the COMMIT behind the writes, without a
    sync of its own; the pipeline's closing sync sends it and waits for it (one round trip
    for the writes, the commit and the sync; a failed commit is raised there). SQLAlchemy's
    own commit that follows then finds the transaction closed and has nothing to do.
    Outside a pipeline, the driver's commit. Elsewhere (SQLite) nothing: the transaction
    commits as usual when its ``begin()`` block ends."""
    if conn.dialect.name != "postgresql":
        return
    dbapi_conn = conn.connection.dbapi_connection
    error = conn.dialect.loaded_dbapi.Error
    if dbapi_conn.pgconn.pipeline_status:  # type: ignore[union-attr]
        _control(conn, "COMMIT")
        return
    try:
        dbapi_conn.commit()  # type: ignore[union-attr]
    except error as exc:
        raise _wrapped(conn, exc, "COMMIT", None) from exc


def _control(conn: Connection, sql: str) -> None:
    """Send a transaction control statement (never prepared) on a spare cursor."""
    cursor = _cursor(conn)
    try:
        cursor.execute(sql, prepare=False)
    except conn.dialect.loaded_dbapi.Error as exc:
        with contextlib.suppress(Exception):
            cursor.close()
        raise _wrapped(conn, exc, sql, None) from exc
    _spare(conn, cursor, done=False)


class HotStatements:
    """:class:`HotStatement` per dialect and set of given columns, built on first use (one
    process may hold a SQLite and a PostgreSQL engine)."""

    def __init__(self, statement: Executable):
        self._statement = statement
        self._built: dict[tuple[str, tuple[str, ...] | None], HotStatement] = {}

    def on(self, conn: Connection, column_keys: Sequence[str] | None = None) -> HotStatement:
        keys = tuple(column_keys) if column_keys is not None else None
        hot = self._built.get((conn.dialect.name, keys))
        if hot is None:
            hot = self._built[(conn.dialect.name, keys)] = HotStatement(
                self._statement, conn.dialect, keys)
        return hot

    def execute(self, conn: Connection, params: Mapping[str, Any] | None = None) -> list[tuple]:
        return self.start(conn, params)()

    def start(self, conn: Connection,
              params: Mapping[str, Any] | None = None) -> Callable[[], list[tuple]]:
        """:meth:`HotStatement.start`: sent now, rows read later."""
        return self.on(conn, tuple(params) if self._statement.is_dml else None).start(conn, params)

    def executemany(self, conn: Connection, rows: Sequence[Mapping[str, Any]]) -> None:
        if rows:
            self.on(conn, tuple(rows[0])).executemany(conn, rows)
