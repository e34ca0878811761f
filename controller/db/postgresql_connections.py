"""PostgreSQL connections for :mod:`controller.db.postgresql_store`: psycopg 3 alone, pooled LIFO.

Built for AWS Lambda: no background thread (a frozen container runs none), no pre-ping (a round trip
on every checkout; a connection found dead is replaced by its user, and a transaction on it retried,
since nothing was committed). Connections run in autocommit: the store sends ``BEGIN`` and ``COMMIT``
itself, so a statement outside any transaction (the record after commit) needs no mode switch.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

import psycopg
from psycopg import pq
from psycopg.conninfo import make_conninfo
from psycopg.rows import TupleRow

#: A psycopg connection as the store uses it (rows as tuples).
Connection = psycopg.Connection[TupleRow]
#: Executions of one statement text after which psycopg prepares it on the server (psycopg's default).
PREPARE_THRESHOLD = 5


def conninfo_from_url(url: str) -> str:
    """A libpq connection string from a SQLAlchemy-style URL (``postgresql+psycopg://…`` or
    ``postgres://…``), decoded as SQLAlchemy decodes it: ``%XX`` escapes everywhere, and ``+`` as a
    space in the query (``options=-c+statement_timeout%3D5s``, as ``URL.render_as_string`` writes
    it), which libpq would keep as a ``+``. Several hosts (``h1:5432,h2:5433``) and bracketed IPv6
    addresses are kept as libpq lists."""
    scheme, separator, _ = url.partition("://")
    if not separator or scheme.split("+")[0] not in ("postgresql", "postgres"):
        raise ValueError("not a PostgreSQL URL (postgresql://… or postgresql+psycopg://…)")
    parts = urlsplit(url)
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    params: dict[str, str] = {}
    if userinfo:
        user, has_password, password = userinfo.partition(":")
        params["user"] = unquote(user)
        if has_password:
            params["password"] = unquote(password)
    listed = [_host_and_port(item) for item in hostlist.split(",")] if hostlist else []
    if any(host for host, _ in listed):
        params["host"] = ",".join(host for host, _ in listed)
    if any(port for _, port in listed):
        params["port"] = ",".join(port for _, port in listed)
    if parts.path.strip("/"):
        params["dbname"] = unquote(parts.path.lstrip("/"))
    params.update(parse_qsl(parts.query, keep_blank_values=True))
    return make_conninfo("", **params)


def _host_and_port(item: str) -> tuple[str, str]:
    """``host[:port]`` or ``[ipv6][:port]`` of a URL's host list, decoded."""
    if item.startswith("["):
        host, _, rest = item[1:].partition("]")
        return host, rest.removeprefix(":")
    host, _, port = item.partition(":")
    return unquote(host), port


def reusable(connection: Connection) -> bool:
    """Whether a returned connection may serve again: open, not broken, and outside any transaction
    (a transaction left open or failed means its user lost track of it)."""
    return not connection.closed and connection.info.transaction_status == pq.TransactionStatus.IDLE


class ConnectionPool:
    """A thread-safe stack of idle connections: the connection returned last serves the next request,
    so its server process's caches (catalog, prepared statements, plans) are warm; at most
    ``max_idle`` are kept, the least recently used closed first.

    ``conninfo`` is a libpq connection string or URI, or a function returning one, called for each new
    connection (credentials may rotate).
    """

    def __init__(
        self,
        conninfo: str | Callable[[], str],
        *,
        max_idle: int = 2,
        prepare_threshold: int | None = PREPARE_THRESHOLD,
    ) -> None:
        if max_idle < 0:
            raise ValueError("max_idle must be 0 or more")
        self._conninfo = conninfo
        self.max_idle = max_idle
        self.prepare_threshold = prepare_threshold
        self._lock = threading.Lock()
        self._idle: list[Connection] = []
        #: Connections lent out when the pool was closed: closed when they come back.
        self._retired: set[Connection] = set()
        self._lent: set[Connection] = set()

    def connect(self) -> Connection:
        """A new connection (not from the idle stack: for a retry after a lost one, whose idle peers
        may have been lost with it)."""
        conninfo = self._conninfo() if callable(self._conninfo) else self._conninfo
        connection: Connection = psycopg.connect(
            conninfo, autocommit=True, prepare_threshold=self.prepare_threshold
        )
        with self._lock:
            self._lent.add(connection)
        return connection

    def acquire(self) -> Connection:
        """The idle connection used last, or a new one when none is idle."""
        with self._lock:
            if self._idle:
                connection = self._idle.pop()
                self._lent.add(connection)
                return connection
        return self.connect()

    def release(self, connection: Connection) -> None:
        """Take a connection back: kept idle if :func:`reusable` (and the pool was not closed while it
        was out), else closed."""
        surplus: list[Connection] = []
        with self._lock:
            self._lent.discard(connection)
            retired = connection in self._retired
            self._retired.discard(connection)
            keep = not retired and reusable(connection)
            if keep:
                self._idle.append(connection)
                excess = max(0, len(self._idle) - self.max_idle)
                surplus, self._idle = self._idle[:excess], self._idle[excess:]
        for idle in surplus:  # the bottom of the stack: the least recently used
            _close(idle)
        if not keep:
            _close(connection)

    def discard(self, connection: Connection) -> None:
        """Close a connection that must not serve again (it broke)."""
        with self._lock:
            self._lent.discard(connection)
            self._retired.discard(connection)
        _close(connection)

    def idle(self) -> int:
        """How many connections are idle."""
        with self._lock:
            return len(self._idle)

    def close(self) -> None:
        """Close the idle connections; those lent out are closed when they come back. The pool stays
        usable: it opens new connections on demand."""
        with self._lock:
            idle, self._idle = self._idle, []
            self._retired |= self._lent
        for connection in idle:
            _close(connection)


def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):  # closing a broken connection may fail; it is gone either way
        connection.close()


#: Called with (statement text, connection) before each statement a store sends.
Listener = Callable[[str, Any], None]


def send(
    listeners: Sequence[Listener],
    connection: Connection,
    statement: str,
    parameters: Sequence[Any] | None = None,
) -> psycopg.Cursor[TupleRow]:
    """Tell the listeners, then send one statement: prepared on the server once psycopg has seen it
    ``prepare_threshold`` times, except transaction control (no parameters), which gains nothing."""
    for listener in list(listeners):  # a listener may remove itself
        listener(statement, connection)
    return connection.execute(statement, parameters, prepare=False if parameters is None else None)
