"""The database under the ledger: one typed metadata, engines for SQLite and PostgreSQL, migrations.

Every package declares its tables on :data:`metadata` (one naming convention, so Alembic and SQLite
batch mode can name constraints), with :class:`UTCDateTime` for every time. Schemas are created and
upgraded only by the Alembic migrations in ``ledger/migrations``; production code never calls
``create_all``.

Transactions: :meth:`Database.transaction` opens one per command at the edge. On SQLite it begins
with ``BEGIN IMMEDIATE`` so a writer takes the write lock up front instead of failing to upgrade a
read lock half-way (SQLite's form of "lock the accounts you touch, in order"). A
:class:`~ledger.errors.BusinessRefusal` commits: the service has written nothing but the refusal's
idempotency record, which must survive so a retry is refused the same way.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.types import TypeDecorator

from ledger.errors import BusinessRefusal

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)

DEFAULT_URL = "sqlite:///coalition.db"


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime on every backend.

    PostgreSQL stores ``timestamptz``; SQLite stores naive UTC text in a fixed-width format, which
    sorts correctly. A naive datetime is refused on the way in: its zone is unknowable.
    """

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are not stored; give a timezone")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def create_engine(url: str = DEFAULT_URL, *, role: str | None = None, **kwargs: Any) -> Engine:
    """An engine for ``url`` with the ledger's connection settings on either backend.

    ``role`` (PostgreSQL only) is ``SET`` on every new connection, so the application can run as
    the least-privileged ``coalition_app`` role that cannot update or delete journal rows.
    """
    url_obj = sa.make_url(url)
    if url_obj.get_backend_name() == "postgresql" and url_obj.drivername == "postgresql":
        url_obj = url_obj.set(drivername="postgresql+psycopg")
    if url_obj.get_backend_name() == "sqlite":
        return _sqlite_engine(url_obj, **kwargs)
    kwargs.setdefault("pool_pre_ping", True)
    engine = sa.create_engine(url_obj, **kwargs)
    if role is not None:

        @sa.event.listens_for(engine, "connect")
        def _set_role(dbapi_connection: Any, _record: Any) -> None:
            with dbapi_connection.cursor() as cursor:
                cursor.execute(f"SET ROLE {_quote_ident(role)}")
            dbapi_connection.commit()

    return engine


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sqlite_engine(url: sa.URL, **kwargs: Any) -> Engine:
    connect_args = kwargs.pop("connect_args", {})
    connect_args.setdefault("timeout", 30)
    engine = sa.create_engine(url, connect_args=connect_args, **kwargs)

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide when transactions begin (see module docstring).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        if url.database not in (None, "", ":memory:"):
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        deferred = conn.get_execution_options().get(_READER, False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")

    return engine


#: Execution option of a :func:`reader` connection.
_READER = "coalition_reader"


@contextmanager
def reader(engine: Engine) -> Iterator[Connection]:
    """A connection for work that only reads (the verifier's workers), rolled back at the end.

    On SQLite its transactions begin deferred, not ``BEGIN IMMEDIATE``: a reader takes no write
    lock, so in WAL mode any number of readers and the one writer proceed side by side, each
    reader on its own snapshot. Elsewhere it is an ordinary connection.
    """
    with engine.connect() as conn:
        conn = conn.execution_options(**{_READER: True})
        try:
            yield conn
        finally:
            conn.rollback()


class JSONText(str):
    """A JSON document already serialised, for a JSON column: :func:`insert_many` stores the text
    as it is, where the column's own processor would serialise the value again (a request's
    fingerprint is made of such text, and a bulk booking stores thousands)."""

    __slots__ = ()


def insert_many(conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]]) -> None:
    """``conn.execute(table.insert(), rows)`` for a big batch, at a fraction of the cost.

    Every row has the same keys. The statement is compiled by SQLAlchemy once per dialect, table
    and columns, and each value goes through its column type's own bind processor, as the
    generic path does; but a time column's processor runs once per distinct value (a batch's
    rows share a few instants), bytes and :class:`JSONText` reach the driver untouched, and the
    rows reach the driver as one ``executemany`` of plain tuples, without the per-row parameter
    dictionaries the generic path builds (tests/integration/test_insert_many.py holds the two
    to the same rows on both backends).
    The columns a row leaves out take their server defaults; the tables written this way have
    no Python-side defaults.
    """
    if rows:
        _run(conn, (table, tuple(rows[0])), table.insert, rows)


def execute_many(
    conn: Connection, statement: sa.Executable, rows: Sequence[Mapping[str, Any]]
) -> None:
    """``conn.execute(statement, rows)`` for a big batch, as :func:`insert_many` runs an insert:
    an UPDATE whose values are bound parameters, or an upsert.

    Each row maps every parameter of the statement (an insert's columns, a ``bindparam``'s
    name) to its value; each value goes through the bind processor of its parameter's type.
    The compiled form is kept per dialect and statement: ``statement`` is built once and kept
    (a module constant), not built per call.
    """
    if rows:
        _run(conn, (statement, tuple(rows[0])), lambda: statement, rows)


def _run(
    conn: Connection,
    key: tuple[Any, tuple[str, ...]],
    statement: Callable[[], Any],
    rows: Sequence[Mapping[str, Any]],
) -> None:
    plans = _plans.setdefault(conn.dialect, {})
    plan = plans.get(key)
    if plan is None:
        if len(plans) >= _PLANS_KEPT:  # statements built per call would otherwise pile up
            plans.clear()
        plan = plans[key] = _Plan(conn.dialect, statement(), key[1])
    conn.exec_driver_sql(plan.sql, plan.parameters(rows))


class _Plan:
    """One compiled statement and the conversions its parameters need."""

    def __init__(self, dialect: sa.Dialect, statement: Any, keys: tuple[str, ...]) -> None:
        # An insert's parameters are its columns; an UPDATE's SET clause is its own ``values``
        # (given no columns, it gains no SET item from a parameter named like a column).
        columns = list(keys) if isinstance(statement, sa.Insert) else None
        compiled = statement.compile(dialect=dialect, column_keys=columns)
        self.sql = str(compiled)
        # Positional drivers take each parameter where it appears (a name may appear twice).
        order = list(compiled.positiontup or ()) if compiled.positional else list(compiled.binds)
        fixed = {name for name in order if name not in keys}
        if not set(keys) <= set(order) or any(compiled.binds[n].required for n in fixed):
            raise ValueError(f"cannot bind {keys} into {self.sql!r}")
        self.keys = order
        self.named = not compiled.positional
        converters = [_converter(compiled.binds[name].type, dialect) for name in order]
        # A value written in the statement (``values(pending=False)``) is bound as a parameter
        # too: the same in every row, converted once.
        self.fixed = {
            name: compiled.binds[name].effective_value
            if convert is None
            else convert(compiled.binds[name].effective_value)
            for name, convert in zip(order, converters, strict=True)
            if name in fixed
        }
        self.converters = converters

    def parameters(self, rows: Sequence[Mapping[str, Any]]) -> list[Any]:
        columns = list(zip(self.keys, self.converters, strict=True))
        converted = [
            [self.fixed[key]] * len(rows)
            if key in self.fixed
            else [row[key] for row in rows]
            if convert is None
            else list(map(convert, (row[key] for row in rows)))
            for key, convert in columns
        ]
        if self.named:
            return [
                dict(zip(self.keys, values, strict=True)) for values in zip(*converted, strict=True)
            ]
        return list(zip(*converted, strict=True))


def _converter(column_type: Any, dialect: sa.Dialect) -> Callable[[Any], Any] | None:
    """The column type's bind processor on this dialect (what SQLAlchemy itself applies),
    remembered per distinct value for times, which a batch repeats; skipped for the values the
    drivers take as they are: ``bytes`` and :class:`JSONText`."""
    process = column_type.dialect_impl(dialect).bind_processor(dialect)
    if process is not None and isinstance(column_type, sa.JSON):
        serialise = process
        # Both drivers take a JSON column's parameter as text (PostgreSQL casts it to json).
        return lambda value: value if type(value) is JSONText else serialise(value)
    if process is not None and isinstance(column_type, sa.LargeBinary):
        wrap = process
        # The processor wraps bytes in the driver's Binary; both drivers take bytes as they are.
        return lambda value: value if type(value) is bytes else wrap(value)
    if process is None or not isinstance(column_type, UTCDateTime | sa.DateTime):
        return process
    memo: dict[Any, Any] = {}

    def remembered(value: Any) -> Any:
        try:
            return memo[value]
        except KeyError:
            if len(memo) >= 4096:  # a long-lived plan meets ever new instants
                memo.clear()
            memo[value] = converted = process(value)
            return converted
        except TypeError:  # unhashable: converted each time, and refused as usual
            return process(value)

    return remembered


#: Plans per dialect (each engine has its own, with its own JSON serialiser), dropped with it:
#: per (table, columns) for :func:`insert_many`, per (statement, parameters) for
#: :func:`execute_many`.
_PLANS_KEPT = 512
_plans: weakref.WeakKeyDictionary[sa.Dialect, dict[tuple[Any, tuple[str, ...]], _Plan]]
_plans = weakref.WeakKeyDictionary()


def is_postgresql(conn: Connection | Engine) -> bool:
    return conn.dialect.name == "postgresql"


class Database:
    """An engine plus the unit-of-work boundary used by the edges (API, CLI, jobs)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @classmethod
    def connect(cls, url: str = DEFAULT_URL, **kwargs: Any) -> Database:
        return cls(create_engine(url, **kwargs))

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """One database transaction: commit on success or business refusal, else roll back."""
        with self.engine.connect() as conn:
            conn.begin()
            try:
                yield conn
            except BusinessRefusal:
                conn.commit()
                raise
            except BaseException:
                conn.rollback()
                raise
            conn.commit()

    def dispose(self) -> None:
        self.engine.dispose()


def alembic_config(engine: Engine) -> Any:
    """Alembic configuration pointing at the migrations shipped inside this package."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(resources.files("ledger") / "migrations"))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Create or upgrade the schema to ``revision`` with the migrations (never ``create_all``)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def current_revision(engine: Engine) -> str | None:
    from alembic.runtime.migration import MigrationContext

    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()
