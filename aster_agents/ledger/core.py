"""The shared ledger's public face: one ``Ledger`` over the use-case modules and a store.

Invariants kept under concurrency (design.md section 5): an agent's slots (distinct symbols
with an open position or an active ``open`` intent) never exceed ``max_positions``; an
account's slots never exceed ``max_total_positions``; with the exclusive symbol policy a
symbol belongs to at most one agent per account; every state change leaves an audit row.

Each method opens one transaction (or reads) on the store and calls the module of its use
case: ``agents``, ``intents`` (with ``limits``), ``fills``, ``books``, ``income``, ``audit``,
``history``. Nothing outside this package sees a connection or SQL.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, TypeVar

from aster_agents.errors import LedgerError, ReservationDenied
from aster_agents.ledger import agents, audit, books, fills, history, income, intents, reports
from aster_agents.ledger.audit import now_ms
from aster_agents.ledger.backend import Conn, HeldLock, Store, open_store
from aster_agents.ledger.counters import bump, denial_reason
from aster_agents.ledger.counters import key as counter_key
from aster_agents.ledger.intents import (
    REAP_INTERVAL_S,
    REAP_MIN_AGE_S,
    STALE_HEARTBEAT_S,
)
from aster_agents.ledger.liveness import host_name
from aster_agents.ledger.rows import (
    ACTIVE_STATES,
    AGENT_STATES,
    EXCHANGE_CLOSE_KINDS,
    FINAL_STATES,
    INTENT_KINDS,
    AccountBooks,
    AccountLimits,
    AgentRow,
    AuditEntry,
    EquityPoint,
    Intent,
    LedgerPosition,
    RebalanceRow,
    SleeveState,
)
from aster_agents.models import Side

REBALANCE_LOCK: Final = "rebalance"
# The tables each read a throwaway ledger keeps depends on: a write declared to touch only
# other tables (``_write_to``) leaves it kept. "agent/ID" stands for one row of ``agents``
# (the read of kind "agent" for ID depends on it too), "equity/ID" for rows of ``equity`` of
# agent ID (the read of kind "nav" for ID depends on them).
KEPT_TABLES: Final[Mapping[str, tuple[str, ...]]] = {
    "agent": ("agents", "positions", "intents"),  # AGENT_COLS counts positions and intents
    "positions": ("positions",),
    "unresolved": ("intents",),
    "sleeves": ("agents",),  # state and units: a heartbeat ("agent/ID") changes neither
    "nav": ("equity",),  # an agent's newest snapshots (``nav_after``): a snapshot extends them
}
KEPT_READ: Final = frozenset(t for tables in KEPT_TABLES.values() for t in tables)
# The tables the order path's writes touch (triggers and the audit included), for the
# kept reads of one agent and account they drop (``Ledger._write_for``).
RESERVE_TABLES: Final = ("intents", "audit", "counters")
INTENT_TABLES: Final = ("intents", "audit", "counters")
FILL_TABLES: Final = ("fills", "positions", "agents", "intents", "audit", "counters")
T = TypeVar("T")
NavRow = tuple[int, float, float | None]  # history.nav_after: time_ms, equity, nav per unit
NAV_TAIL_MAX: Final = 1000  # snapshots a kept tail holds before it is read (then: read again)
KeptKey = tuple[str, str | None, str | None]  # (kind, agent or None, user or None)
_NONE: Final = object()  # no kept read


class Ledger:
    """The shared ledger: ``<state_dir>/ledger.sqlite3``, or the PostgreSQL database of
    ``url`` / ``$ASTER_AGENTS_LEDGER_URL`` (``backend.ledger_url``); one instance per process.

    ``throwaway=True``: a ledger in this process's memory, gone when it is closed (``backtest``);
    no file, lock or sync, and never the configured PostgreSQL database.
    """

    def __init__(
        self,
        state_dir: Path,
        *,
        stale_heartbeat_s: float = STALE_HEARTBEAT_S,
        reap_interval_s: float = REAP_INTERVAL_S,
        reap_min_age_s: float = REAP_MIN_AGE_S,
        url: str | None = None,
        throwaway: bool = False,
    ) -> None:
        self.store: Store = open_store(Path(state_dir), url, throwaway=throwaway)
        # A throwaway ledger has no other writer: a read is kept until this process writes
        # (a write declared narrow by ``_write_to`` drops only the reads of its tables).
        self._kept: dict[KeptKey, object] | None = {} if throwaway else None
        self._clean_at = self._writes()  # the store's write count the kept reads are of
        # A throwaway ledger's heartbeats wait for the next write that may read or change an
        # agent row (``heartbeat``); reads of agent rows show them meanwhile.
        self._beats: dict[str, agents.Beat] = {}
        self._known: set[str] = set()  # agents read or registered here (none is ever deleted)
        # A throwaway ledger's writes on one intent drop only the kept reads of its agent and
        # account (``_write_for``): the agent and account of each intent it has seen, while
        # no agent has moved to another account (then every row of an agent is its account's).
        self._owners: dict[str, tuple[str, str]] = {}
        # A throwaway ledger's end-of-tick snapshots (and their marks) wait for its next write,
        # or for a read of equity or marks (``_defer_snapshot``); by (user, symbol) the marks
        # keep the order of their first recording and the last price, as the upserts would.
        self._snaps: list[books.EquityRow] = []
        self._marks: dict[tuple[str, str], tuple[str, int]] = {}
        self._scoping = throwaway
        # agent -> (equity text, nav text, as floats) of its last snapshot (``_nav_row``)
        self._last_nav: dict[str, tuple[str, str | None, float, float | None]] = {}
        self.state_dir = self.store.state_dir
        self.host = host_name()
        # PostgreSQL: the common intent writes are one statement each (see ``intents.Call``)
        self._call: intents.Call | None = getattr(self.store, "call", None)
        self._reaper = intents.Reaper(
            stale_heartbeat_s=stale_heartbeat_s,
            interval_s=reap_interval_s,
            min_age_s=reap_min_age_s,
            host=self.host,
        )

    def close(self) -> None:
        self.store.close()

    def _writes(self) -> int:
        """Write transactions the store has begun (a throwaway SQLite store counts them)."""
        writes: int = getattr(self.store, "writes", -1)
        return writes

    def _kept_reads(self) -> dict[KeptKey, object] | None:
        """The kept reads, emptied first if any write not declared narrow happened since."""
        kept = self._kept
        if kept is not None:
            writes = self._writes()
            if writes != self._clean_at:
                kept.clear()
                self._clean_at = writes
        return kept

    def _keep(self, key: KeptKey, read: Callable[[], T]) -> T:
        """``read()``, or (throwaway ledger) its last answer while nothing was written since."""
        kept = self._kept_reads()
        if kept is None:
            return read()
        hit = kept.get(key, _NONE)
        if hit is not _NONE:
            return hit  # type: ignore[return-value]  # stored by this key's read
        value = read()
        kept[key] = value
        return value

    def _write(self, *, durable: bool = True) -> AbstractContextManager[Conn]:
        """``store.write()``, which first writes the heartbeats, snapshots and marks a
        throwaway ledger has not written yet (any write may read them: the reaper reads
        heartbeats, a reallocation equity and marks)."""
        if not (self._beats or self._snaps or self._marks):
            return self.store.write(durable=durable)
        return _NarrowWrite(self, None, self.store.write(durable=durable))

    def _write_to(
        self, tables: Sequence[str], *, durable: bool = True
    ) -> AbstractContextManager[Conn]:
        """``store.write()`` for a write that touches only ``tables`` (triggers included):
        a throwaway ledger keeps its reads of other tables across it, and writes its
        heartbeats not yet written only when ``tables`` have an agent row."""
        return _NarrowWrite(self, tables, self.store.write(durable=durable))

    def _write_for(
        self, tables: Sequence[str], owner: tuple[str, str | None] | None, *, durable: bool = True
    ) -> AbstractContextManager[Conn]:
        """``store.write()`` for a write that touches only ``tables`` rows of one agent (and
        of its account, when ``owner`` names it): ``owner`` is (agent, account or None). A
        throwaway ledger keeps its reads of other agents and accounts across it, unless the
        reaper expired someone's reservation in it. ``owner`` None: any rows (``_write``)."""
        if owner is None or not self._scoping:
            return self._write(durable=durable)
        return _NarrowWrite(self, tables, self.store.write(durable=durable), owner)

    def _wrote_for(
        self,
        kept: dict[KeptKey, object] | None,
        tables: Sequence[str],
        owner: tuple[str, str | None],
    ) -> None:
        """A write to ``tables`` rows of ``owner`` committed: drop the kept reads of them."""
        if kept is None:
            return
        agent_id, user = owner
        for kind in _kinds(tuple(tables)):
            if kind == "agent" or kind == "unresolved":  # rows of the agent only
                kept.pop((kind, agent_id, None), None)
            elif user is None:  # of an account: which one is not known
                for key in [k for k in kept if k[0] == kind]:
                    del kept[key]
            elif kind == "sleeves":
                kept.pop((kind, user, None), None)
            else:  # positions by agent, by account, by both, or all
                for a, u in ((agent_id, None), (None, user), (agent_id, user), (None, None)):
                    kept.pop((kind, a, u), None)
        self._clean_at = self._writes()  # a write that fails leaves it behind: all dropped

    def _owner(self, client_order_id: str) -> tuple[str, str] | None:
        """The agent and account of an intent this (throwaway) ledger has seen and not seen
        resolved (finished or released), or None: then a write on it drops every kept read."""
        return self._owners.get(client_order_id) if self._scoping else None

    def _seen(self, found: Iterable[Intent]) -> None:
        """Remember the agent and account of each intent (throwaway: see ``_write_for``)."""
        if self._scoping:
            for i in found:
                self._owners[i.client_order_id] = (i.agent_id, i.user)

    def _carry_beats(self, conn: Conn) -> dict[str, agents.Beat]:
        """Write the heartbeats not written yet in the transaction of ``conn``; the ones
        written, to be given back (``_uncarry``) if that transaction fails."""
        beats, self._beats = self._beats, {}
        try:
            agents.carry_beats(conn, beats)
        except BaseException:
            self._uncarry(beats)
            raise
        return beats

    def _carry_snapshots(self, conn: Conn) -> tuple[list[books.EquityRow], dict[Any, Any]]:
        """Write the snapshots and marks not written yet in the transaction of ``conn``; the
        ones written, to be given back (``_uncarry_snapshots``) if it fails."""
        snaps, marks = self._snaps, self._marks
        self._snaps, self._marks = [], {}
        try:
            rows = [(user, symbol, mark, when) for (user, symbol), (mark, when) in marks.items()]
            books.write_snapshots(conn, rows, snaps)
        except BaseException:
            self._uncarry_snapshots((snaps, marks))
            raise
        return snaps, marks

    def _uncarry_snapshots(self, carried: tuple[list[books.EquityRow], dict[Any, Any]]) -> None:
        """The transaction that wrote ``carried`` rolled back: they wait again, before any
        recorded since."""
        snaps, marks = carried
        self._snaps = snaps + self._snaps
        newer, self._marks = self._marks, dict(marks)
        self._marks.update(newer)

    def _flush_snapshots(self) -> None:
        """Write the snapshots and marks not written yet, before a read of them."""
        if self._snaps or self._marks:
            with self._write_to(()):
                pass

    def _uncarry(self, beats: Mapping[str, agents.Beat]) -> None:
        """The transaction that wrote ``beats`` rolled back: they wait again (before any
        beaten since, which are newer)."""
        newer, self._beats = self._beats, dict(beats)
        for agent_id, b in newer.items():
            old = self._beats.get(agent_id)
            self._beats[agent_id] = b if old is None else old.then(b)

    def _beaten(self, row: AgentRow | None) -> AgentRow | None:
        """An agent row read from the store, with the heartbeat not written yet if any."""
        if row is None:
            return None
        self._known.add(row.agent_id)
        beat = self._beats.get(row.agent_id)
        return row if beat is None else agents.beaten(row, beat)

    def _wrote_to(self, kept: dict[KeptKey, object] | None, tables: Sequence[str]) -> None:
        """A write to ``tables`` committed: drop the kept reads of those tables only."""
        if kept is None:
            return
        for t in tables:
            if t.startswith("agent/"):  # one agent's row
                kept.pop(("agent", t.removeprefix("agent/"), None), None)
            elif t.startswith("equity/"):  # one agent's snapshots
                kept.pop(("nav", t.removeprefix("equity/"), None), None)
            elif t in KEPT_READ:
                for key in [k for k in kept if t in KEPT_TABLES[k[0]]]:
                    del kept[key]
        self._clean_at = self._writes()  # a write that fails leaves it behind: all dropped

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ----------------------------------------------------------------- agents and accounts

    def register_agent(
        self,
        agent_id: str,
        user: str,
        *,
        max_positions: int,
        capital: Decimal | None = None,
        enabled: bool = True,
    ) -> int:
        """Insert or update an agent; returns its nonce slot (0..63, unique per user).

        ``enabled=False`` disables; ``enabled=True`` never re-enables a disabled agent (only
        ``set_state`` does). A changed ``capital`` is allocated at the sleeve's NAV.
        """
        agents.check_new(agent_id, max_positions)
        with self._write() as conn:
            if self._scoping and agents.user_of(conn, agent_id) not in (None, user):
                self._scoping = False  # an agent's older rows are another account's
            slot = agents.register(
                conn, agent_id, user, max_positions=max_positions, capital=capital, enabled=enabled
            )
        self._known.add(agent_id)
        return slot

    def set_account_limits(
        self,
        user: str,
        *,
        max_total_positions: int,
        max_gross_leverage: Decimal,
        equity: Decimal | None = None,
        equity_time_ms: int | None = None,
    ) -> None:
        """Set the limits every agent of ``user`` shares; ``equity`` enables the leverage check.

        ``equity`` also opens the account's unallocated sleeve the first time (see
        ``ensure_account``); ``equity_time_ms`` is the exchange's time of that equity.
        """
        with self._write() as conn:
            agents.set_account_limits(
                conn,
                user,
                max_total_positions=max_total_positions,
                max_gross_leverage=max_gross_leverage,
                equity=equity,
                equity_time_ms=equity_time_ms,
            )

    def account_limits(self, user: str) -> AccountLimits | None:
        return agents.account_limits(self.store.conn, user)

    def set_enabled(self, agent_id: str, enabled: bool, reason: str) -> None:
        """Enable (state active) or disable (state disabled: opens nothing) an agent."""
        self.set_state(agent_id, "active" if enabled else "disabled", reason)

    def set_state(
        self, agent_id: str, state: str, reason: str, *, expect: str | None = None
    ) -> bool:
        """Set active / probation / disabled; only ``disabled`` stops new openings.

        With ``expect``, a compare-and-set: nothing changes (and False is returned) unless the
        agent is still in that state, so an automatic transition computed from an old view
        can never overwrite an operator's ``disable`` made meanwhile.
        """
        if state not in AGENT_STATES:
            raise LedgerError(f"agent state {state!r} is not one of {', '.join(AGENT_STATES)}")
        with self._write() as conn:
            return agents.set_state(conn, agent_id, state, reason, expect)

    def allocate(self, agent_id: str, capital: Decimal, *, equity: Decimal | None = None) -> None:
        """Set the agent's capital, issuing/redeeming units at the current NAV per unit.

        ``equity`` is the sleeve's equity including unrealized P&L, if the caller knows it;
        otherwise the sleeve at the recorded marks prices the units. The capital moved comes
        from (or goes back to) the account's unallocated cash once that sleeve exists.
        """
        with self._write() as conn:
            books.allocate(conn, agent_id, capital, equity)

    def heartbeat(
        self, agent_id: str, pid: int, *, error: str | None = None, tick: bool = False
    ) -> None:
        """Record that ``pid`` runs ``agent_id`` now; ``error`` is the last error (or None).

        A throwaway ledger (nothing outside this process reads it) writes a beat without an
        error of an agent it knows only with its next write that may read or change agent
        rows, in that write's transaction: one write transaction fewer per agent tick. Its
        reads of agent rows show the beat meanwhile, so every answer is the same.
        """
        key = ("agent", agent_id, None)
        kept = self._kept_reads()
        row = None if kept is None else kept.get(key)
        if error is None and kept is not None and agent_id in self._known:
            beat = agents.Beat(pid, now_ms(), self.host, int(tick))
            last = self._beats.get(agent_id)
            self._beats[agent_id] = beat if last is None else last.then(beat)
            if isinstance(row, AgentRow):
                kept[key] = agents.beaten(row, beat)
            return
        own = (f"agent/{agent_id}",)  # this agent's row only
        tables = own if error is None else (*own, "audit", "counters")
        with self._write_to(tables, durable=False) as conn:
            ms = agents.heartbeat(conn, agent_id, pid, error, tick, self.host)
        if isinstance(row, AgentRow) and kept is not None:  # kept: what the UPDATE set
            kept[key] = row._replace(
                heartbeat_pid=pid,
                heartbeat_ms=ms,
                heartbeat_error=error,
                ticks=row.ticks + int(tick),
                heartbeat_host=self.host,
                heartbeat_stopped=False,
            )

    def heartbeat_stopped(self, agent_id: str, pid: int) -> bool:
        """Record that ``pid``'s run of ``agent_id`` ended normally (status on any host then
        shows STOPPED, not a stale heartbeat); False if a newer run has beaten since."""
        with self._write(durable=False) as conn:
            return agents.stopped(conn, agent_id, pid, self.host)

    def agent(self, agent_id: str) -> AgentRow | None:
        return self._keep(
            ("agent", agent_id, None),
            lambda: self._beaten(agents.get(self.store.conn, agent_id)),
        )

    def agent_rows(self) -> list[AgentRow]:
        rows = agents.rows(self.store.conn)
        if not self._beats:
            return rows
        return [r for r in map(self._beaten, rows) if r is not None]

    def sleeve_states(self, user: str) -> list[SleeveState]:
        """The state and units of every agent of ``user`` (the account's kill switch, each
        tick): a throwaway ledger keeps them until a write that may change them."""
        found = self._keep(
            ("sleeves", user, None), lambda: agents.sleeve_states(self.store.conn, user)
        )
        return list(found)

    # ----------------------------------------------------------------- reservations

    def reserve(
        self,
        agent_id: str,
        symbol: str,
        side: Side,
        *,
        margin: Decimal,
        notional: Decimal,
        kind: str = "open",
        ttl_seconds: float = 60,
        pid: int | None = None,
        note: str | None = None,
    ) -> Intent:
        """Check every limit and write a ``reserved`` intent, in one transaction.

        ``note`` (the strategy's reason, or which protective order) is kept as the intent's
        reason, for the trade history (``ledger.reports``).

        Raises ``ReservationDenied`` with the reason when a limit says no. The same
        transaction reaps stale reservations (``intents.Reaper``): all of them before any
        denial, and those expired or older than ``reap_min_age_s`` in a sweep at this
        process's first reservation, then at least every ``reap_interval_s`` and before every
        ``close`` or ``protect``. A stale reservation can only make the limits tighter, so it
        never lets one through, and it never causes a denial either. The sweep skips young
        reservations because a live owner resolves its own within moments (sends or releases
        it), and checking whether each owner is alive is most of a sweep's cost.

        The commit is not synced on its own (``durable=False``): nothing outside the ledger
        acts on a reservation until ``mark_sent``, which is durable, and its sync covers this
        commit too (the WAL is recovered as a prefix). A reservation lost in an OS crash
        therefore never had an order, and its seq and client order id are free to reuse.
        """
        if kind not in INTENT_KINDS:
            raise LedgerError(f"intent kind {kind!r} is not one of {', '.join(INTENT_KINDS)}")
        if margin < 0 or notional < 0:
            raise LedgerError(f"agent {agent_id}: margin and notional must be >= 0")
        me = os.getpid()
        now = now_ms()
        ttl_ms = int(ttl_seconds * 1000)
        note = None if note is None else note[:200]
        if (
            kind == "open"
            and self._call is not None
            and (not self._reaper.due() or self._reaper.quiet(self.store.conn, now))
        ):
            intent = intents.reserve_call(
                self._call,
                agent_id,
                symbol,
                side,
                margin=margin,
                notional=notional,
                now=now,
                ttl_ms=ttl_ms,
                pid=me if pid is None else pid,
                note=note,
                host=self.host,
            )
            if intent is not None:
                return intent
            now = now_ms()  # not granted there: the full check below says why, or grants
        with self._write_for(RESERVE_TABLES, (agent_id, None), durable=False) as conn:
            got = intents.reserve(
                conn,
                self._reaper,
                agent_id,
                symbol,
                side,
                kind=kind,
                margin=margin,
                notional=notional,
                now=now,
                ttl_ms=ttl_ms,
                pid=me if pid is None else pid,
                me=me,
                note=note,
            )
            if isinstance(got, str):  # counted for the exporter in the deciding transaction
                bump(
                    conn,
                    {counter_key("reservation_denials", agent_id, reason=denial_reason(got)): 1},
                )
        if isinstance(got, str):
            raise ReservationDenied(f"agent {agent_id} {kind} {symbol}: {got}")
        self._seen((got,))
        return got

    def mark_sent(self, client_order_id: str, nonce: int | None = None) -> bool:
        """Record that the order is about to go on the wire; False if no longer reserved.

        From here on the intent is in flight and is never reaped. False means it expired or
        was released first: its slot may already be someone else's, so do not send.
        Durable: it returns once its commit, and with it the reservation's, is on disk, so
        no order goes out for an intent an OS crash or power cut could take back.
        ``nonce`` is the nonce the order will carry: a noop with it later spends it, which
        proves an order that is still unknown can never be accepted.
        """
        if self._call is not None:
            return intents.mark_sent_call(self._call, client_order_id, now_ms(), nonce)
        with self._write_for(INTENT_TABLES, self._owner(client_order_id)) as conn:
            return intents.mark_sent(conn, client_order_id, now_ms(), nonce)

    def confirm(self, client_order_id: str) -> bool:
        """Mark a reserved intent as sent and accepted; False if it expired or was released."""
        if self._call is not None:  # durable as the write below: one statement, then a flush
            return intents.transition_call(
                self._call, client_order_id, ("reserved",), "confirmed", None, now_ms(), True
            )
        with self._write_for(INTENT_TABLES, self._owner(client_order_id)) as conn:
            return intents.transition(
                conn, client_order_id, ("reserved",), "confirmed", None, now_ms()
            )

    def release(self, client_order_id: str, reason: str) -> bool:
        """Give back a reserved or confirmed intent that did not become an order.

        Committed without its own fsync (see ``SqliteStore.write``): losing a release in an
        OS crash only keeps a slot busy until the reaper or start-up recovery frees it.
        """
        if self._call is not None:
            return intents.transition_call(
                self._call, client_order_id, ACTIVE_STATES, "released", reason, now_ms(), False
            )
        owner = self._owner(client_order_id)
        with self._write_for(INTENT_TABLES, owner, durable=False) as conn:
            done = intents.transition(
                conn, client_order_id, ACTIVE_STATES, "released", reason, now_ms()
            )
        self._owners.pop(client_order_id, None)  # resolved: a later write is rare (see _owner)
        return done

    def release_unsent(self, client_order_id: str, reason: str) -> bool:
        """Release a reservation only if its order was never marked sent (another process's
        too: its ``mark_sent`` then fails, so that order never goes out); False otherwise."""
        with self._write_for(INTENT_TABLES, self._owner(client_order_id)) as conn:
            return intents.release_unsent(conn, client_order_id, reason, now_ms())

    def finish_intent(self, client_order_id: str, state: str) -> None:
        """Close an intent with a final state (filled, canceled, rejected, ...)."""
        if state not in FINAL_STATES:
            raise LedgerError(f"final intent state {state!r} is not one of {FINAL_STATES}")
        with self._write_for(INTENT_TABLES, self._owner(client_order_id)) as conn:
            intents.finish(conn, client_order_id, state, now_ms())
        self._owners.pop(client_order_id, None)  # resolved: a later write is rare (see _owner)

    def intent(self, client_order_id: str) -> Intent | None:
        found = intents.get(self.store.conn, client_order_id)
        if found is not None:
            self._seen((found,))
        return found

    def unresolved_intents(self, agent_id: str) -> list[Intent]:
        """Intents still reserved or confirmed, plus reaped ones that were marked sent."""
        found = self._keep(
            ("unresolved", agent_id, None),
            lambda: self._seeing(intents.unresolved(self.store.conn, agent_id)),
        )
        return list(found)

    def _seeing(self, found: list[Intent]) -> list[Intent]:
        self._seen(found)
        return found

    def intent_symbols(self, user: str) -> set[str]:
        """Every symbol an agent of ``user`` ever placed an order on."""
        return intents.symbols(self.store.conn, user)

    # ----------------------------------------------------------------- fills and positions

    def book_fill(
        self,
        client_order_id: str,
        *,
        trade_id: int,
        symbol: str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        realized_pnl: Decimal,
        commission: Decimal,
        time_ms: int,
    ) -> bool:
        """Book one trade of the order ``client_order_id``; False if already booked."""
        if qty <= 0:
            raise LedgerError(f"fill {trade_id} of {client_order_id}: qty must be > 0")
        with self._write_for(FILL_TABLES, self._owner(client_order_id)) as conn:
            return fills.book_fill(
                conn,
                client_order_id,
                trade_id=trade_id,
                symbol=symbol,
                side=side,
                qty=qty,
                price=price,
                realized_pnl=realized_pnl,
                commission=commission,
                time_ms=time_ms,
            )

    def book_exchange_close(
        self,
        user: str,
        *,
        event: str,
        order_id: int,
        client_order_id: str,
        trade_id: int,
        symbol: str,
        side: Side,
        qty: Decimal,
        price: Decimal,
        realized_pnl: Decimal,
        commission: Decimal,
        time_ms: int,
    ) -> str | None:
        """Book a trade of an order the exchange placed itself (``event``: liquidation, adl)
        to the agent whose position on ``symbol`` it reduces; returns that agent.

        The order gets an intent of kind ``event`` (client order id ``<event>-<order id>``,
        already filled) so the fill, its P&L and its fee are the agent's like any other, the
        position shrinks or closes (freeing the slot and the symbol) and an audit row named
        ``event`` records it. Idempotent per trade. None when no agent holds that side of
        the symbol: the caller books the trade to unallocated.
        """
        if event not in EXCHANGE_CLOSE_KINDS:
            raise LedgerError(f"exchange close {event!r} is not one of {EXCHANGE_CLOSE_KINDS}")
        with self._write() as conn:
            return fills.book_exchange_close(
                conn,
                user,
                event=event,
                order_id=order_id,
                client_order_id=client_order_id,
                trade_id=trade_id,
                symbol=symbol,
                side=side,
                qty=qty,
                price=price,
                realized_pnl=realized_pnl,
                commission=commission,
                time_ms=time_ms,
            )

    def close_position(self, agent_id: str, symbol: str, reason: str) -> bool:
        """Drop a position without a fill (reconcile found it flat); frees slot and symbol."""
        with self._write() as conn:
            return fills.close_position(conn, agent_id, symbol, reason)

    def book_funding(
        self, agent_id: str, symbol: str, amount: Decimal, tran_id: int, time_ms: int
    ) -> bool:
        """Book one funding payment (signed: + received); False if already booked."""
        with self._write() as conn:
            return fills.book_funding(conn, agent_id, symbol, amount, tran_id, time_ms)

    def positions(
        self, agent_id: str | None = None, user: str | None = None
    ) -> list[LedgerPosition]:
        """Open positions, optionally of one agent and/or one account."""
        found = self._keep(
            ("positions", agent_id, user), lambda: fills.positions(self.store.conn, agent_id, user)
        )
        return list(found)

    def symbol_owner(self, user: str, symbol: str) -> str | None:
        """The agent holding ``symbol`` on ``user`` (position or active open intent)."""
        with self.store.read() as conn:
            return fills.symbol_owner(conn, user, symbol)

    def counts(self, user: str) -> tuple[int, int]:
        """(open positions, slots reserved by open intents on symbols not yet held)."""
        with self.store.read() as conn:
            return fills.counts(conn, user)

    def booked_trades(self, user: str, symbol: str) -> dict[int, tuple[Decimal, Decimal] | None]:
        """Trade ids already booked on ``symbol``: ours -> (realized P&L, commission), unowned
        (booked to unallocated) -> None."""
        with self.store.read() as conn:
            return fills.booked_trades(conn, user, symbol)

    def holder_at(self, user: str, symbol: str, time_ms: int) -> str | None:
        """The agent whose booked fills left it a position on ``symbol`` just before ``time_ms``.

        Used to attribute funding, which has a symbol but no client order id; with the
        exclusive symbol policy at most one agent holds a symbol at a time.
        """
        return fills.holder_at(self.store.conn, user, symbol, time_ms)

    # ----------------------------------------------------------------- books (NAV, cash)

    def ensure_account(self, user: str, equity: Decimal, time_ms: int | None = None) -> Decimal:
        """Record the exchange equity seen now; the first time, open the unallocated sleeve.

        The unallocated cash starts as ``equity`` - the account's sleeves (at the recorded
        marks), in one transaction, so the books add up to the exchange at that instant.
        Later calls only record the equity. Returns the unallocated cash.
        """
        with self._write() as conn:
            return books.ensure_account(conn, user, equity, time_ms)

    def account_books(self, user: str) -> AccountBooks | None:
        """Unallocated cash and the exchange equity last seen, or None for an unknown account."""
        return books.account_books(self.store.conn, user)

    def sleeve_equities(
        self, user: str, marks: Mapping[str, Decimal] | None = None
    ) -> dict[str, Decimal]:
        """Each sleeve of ``user`` at ``marks`` (default: the marks recorded in the ledger)."""
        self._flush_snapshots()
        with self.store.read() as conn:
            return books.sleeve_equities(conn, user, marks)

    def books_equity(self, user: str, marks: Mapping[str, Decimal] | None = None) -> Decimal:
        """Sum of the account's sleeves at ``marks`` plus its unallocated cash."""
        self._flush_snapshots()
        with self.store.read() as conn:
            return books.books_equity(conn, user, marks)

    def snapshot_equity(self, agent_id: str, equity: Decimal, time_ms: int | None = None) -> None:
        """Append a sleeve equity point with the agent's units and NAV per unit at that time
        (``snapshot_with_marks`` without marks)."""
        self.snapshot_with_marks(agent_id, equity, {}, user="", time_ms=time_ms)

    def snapshot_with_marks(
        self,
        agent_id: str,
        equity: Decimal,
        marks: Mapping[str, Decimal],
        *,
        user: str,
        time_ms: int | None = None,
    ) -> None:
        """``record_marks(user, marks)`` then ``snapshot_equity(agent_id, equity)``, in one
        transaction stamped with one time: the end of every agent tick. The rows are those
        of the two calls; one commit (and one writer lock) fewer per tick and live agent."""
        units = self._kept_units(agent_id)
        when = now_ms() if time_ms is None else time_ms
        if units is not None:
            self._defer_snapshot(agent_id, equity, marks, user, when, units)
            return
        tail = self._nav_tail(agent_id)
        with self._write_to(("marks", f"equity/{agent_id}")) as conn:
            if marks:
                books.record_marks(conn, user, marks, when)
            row = books.snapshot_equity(
                conn, agent_id, equity, when, units=units, returning=tail is not None
            )
        self._extend_tail(agent_id, tail, row)

    def _defer_snapshot(
        self,
        agent_id: str,
        equity: Decimal,
        marks: Mapping[str, Decimal],
        user: str,
        time_ms: int | None,
        units: Decimal,
    ) -> None:
        """A throwaway ledger's snapshot (``units`` from its kept agent row): the rows
        ``snapshot_with_marks`` writes, kept for the next write (``_carry_snapshots``); a
        kept ``nav_after`` tail gets the row as it will read. No write transaction per tick:
        nothing outside this process reads the ledger, and its own reads of equity and marks
        write them first (``_flush_snapshots``)."""
        row = books.equity_row(agent_id, equity, time_ms, units)
        pending = self._marks
        for _, symbol, mark, when in books.mark_rows(user, marks, row[1]):
            pending[(user, symbol)] = (mark, when)
        self._snaps.append(row)
        tail = self._nav_tail(agent_id)
        if tail is not None:
            self._extend_tail(agent_id, tail, self._nav_row(row))

    def _nav_row(self, row: books.EquityRow) -> NavRow:
        """``books.nav_row(row)``, converting the texts again only when they changed since
        the agent's last snapshot (a flat sleeve's equity stays the same, tick after tick)."""
        last = self._last_nav.get(row[0])
        if last is not None and last[0] == row[2] and last[1] == row[4]:
            return (row[1], last[2], last[3])
        found = books.nav_row(self.store.conn, row)
        self._last_nav[row[0]] = (row[2], row[4], found[1], found[2])
        return found

    def _nav_tail(self, agent_id: str) -> _NavTail | None:
        """The agent's kept ``nav_after`` rows (throwaway ledger), which a snapshot extends."""
        kept = self._kept_reads()
        tail = None if kept is None else kept.get(("nav", agent_id, None))
        return tail if isinstance(tail, _NavTail) else None

    def _extend_tail(self, agent_id: str, tail: _NavTail | None, row: NavRow | None) -> None:
        """Keep ``tail`` with the snapshot ``row`` just written (as ``nav_after`` reads it):
        ``nav_after`` orders by time, then by insertion, as a stable sort of the appended."""
        kept = self._kept_reads()
        if tail is None or row is None or kept is None or len(tail.rows) >= NAV_TAIL_MAX:
            return
        rows = tail.rows
        if row[0] > tail.since:
            rows = [*rows, row]
            if len(rows) > 1 and rows[-2][0] > row[0]:
                rows.sort(key=lambda r: r[0])
        kept[("nav", agent_id, None)] = _NavTail(tail.since, rows)

    def _kept_units(self, agent_id: str) -> Decimal | None:
        """The agent's units from a throwaway ledger's kept row (None: read them in the write)."""
        kept = self._kept_reads()
        row = None if kept is None else kept.get(("agent", agent_id, None))
        return row.units if isinstance(row, AgentRow) else None

    def equity_history(self, agent_id: str) -> list[EquityPoint]:
        """Equity snapshots oldest first: (time_ms, equity, nav per unit or None)."""
        self._flush_snapshots()
        return books.equity_history(self.store.conn, agent_id)

    def import_equity(self, agent_id: str, points: Iterable[tuple[int, Decimal]]) -> int:
        """Append many ``(time_ms, equity)`` snapshots at the agent's current units, in one
        transaction (history imports, benches); the number written."""
        with self._write() as conn:
            return reports.import_equity(conn, agent_id, points)

    # ----------------------------------------------------------------- trade history

    def trade_fills(
        self, agent_id: str | None = None, symbol: str | None = None
    ) -> list[reports.TradeFill]:
        """Every fill with its intent's kind and note, oldest first (``trades``)."""
        return reports.trade_fills(self.store.conn, agent_id, symbol)

    def funding_rows(self, agent_id: str | None = None) -> list[reports.FundingRow]:
        return reports.funding_rows(self.store.conn, agent_id)

    def state_changes(self) -> list[reports.StateChange]:
        return reports.state_changes(self.store.conn)

    def forced_closes(self) -> list[reports.ForcedClose]:
        return reports.forced_closes(self.store.conn)

    def record_marks(
        self, user: str, marks: Mapping[str, Decimal], time_ms: int | None = None
    ) -> None:
        """Remember the exchange mark price of each symbol (the latest one per symbol)."""
        if not marks:
            return
        when = now_ms() if time_ms is None else time_ms
        with self._write_to(("marks",), durable=False) as conn:
            books.record_marks(conn, user, marks, when)

    def marks(self, user: str) -> dict[str, Decimal]:
        self._flush_snapshots()
        with self.store.read() as conn:
            return books.marks(conn, user)

    def reallocate(
        self,
        moves: Mapping[str, Decimal],
        *,
        reason: str,
        detail: Mapping[str, object],
        time_ms: int | None = None,
    ) -> int:
        """Set each agent's capital to its target, in one transaction; returns the rebalance id.

        Units are issued/redeemed at each sleeve's current NAV (sleeve equity at the recorded
        marks), so no NAV per unit moves; the difference comes from / goes to the account's
        unallocated cash. Refused (LedgerError, nothing written) when a target is negative,
        an agent is unknown, an account has no unallocated sleeve yet, unallocated would go
        negative, or a sleeve would have less equity than the margin its open positions and
        active open intents use. ``time_ms`` (default now) is the rebalance's time: the
        automatic rebalance's clock, which times the next one.
        """
        with self._write() as conn:
            return books.reallocate(conn, moves, reason, detail, time_ms)

    def last_rebalance(self) -> RebalanceRow | None:
        return books.last_rebalance(self.store.conn)

    def rebalances(self, limit: int = 100) -> list[RebalanceRow]:
        """The newest ``limit`` rebalances, newest first."""
        return books.rebalances(self.store.conn, limit)

    @contextmanager
    def rebalance_lock(self, *, wait: bool = True) -> Iterator[HeldLock | None]:
        """Hold the rebalance lock (one process applies a rebalance at a time); yields None
        when it is busy and ``wait`` is off. Its stamp is the last attempt on this host."""
        with self.store.named_lock(REBALANCE_LOCK, wait=wait) as held:
            yield held

    # ----------------------------------------------------------------- income

    def book_income(
        self,
        user: str,
        tran_id: int,
        *,
        kind: str,
        symbol: str,
        amount: Decimal,
        time_ms: int,
        agent_id: str | None,
    ) -> bool:
        """Book one exchange income entry once per (user, tranId); False if already booked.

        With ``agent_id`` the amount is the agent's funding; without, it goes to the
        account's unallocated cash (funding on a symbol no agent held, transfers, ...).
        """
        with self._write() as conn:
            return income.book_income(
                conn,
                user,
                tran_id,
                kind=kind,
                symbol=symbol,
                amount=amount,
                time_ms=time_ms,
                agent_id=agent_id,
            )

    def book_unowned_trade(
        self,
        user: str,
        trade_id: int,
        *,
        symbol: str,
        realized_pnl: Decimal,
        commission: Decimal,
        time_ms: int,
    ) -> bool:
        """Book a trade of an order no agent placed (web UI, another tool) to unallocated."""
        with self._write() as conn:
            return income.book_unowned_trade(
                conn,
                user,
                trade_id,
                symbol=symbol,
                realized_pnl=realized_pnl,
                commission=commission,
                time_ms=time_ms,
            )

    def income_since(self, user: str, kind: str) -> int | None:
        """The time of the newest booked income of ``kind`` (e.g. FUNDING_FEE), or None."""
        return income.newest(self.store.conn, user, kind)

    def income_booked(self, user: str, source: str) -> bool:
        """True when ``source`` (``tran:<id>`` or ``trade:<id>``) is already booked."""
        return income.booked(self.store.conn, user, source)

    # ----------------------------------------------------------------- audit and history

    def audit(self, limit: int = 100, agent_id: str | None = None) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        return audit.entries(self.store.conn, limit, agent_id)

    def note_reconcile(self, user: str, exchange_ms: int, differences: int) -> None:
        """Remember that reconcile ran for ``user`` up to the exchange time ``exchange_ms``."""
        with self._write(durable=False) as conn:
            audit.record(
                conn,
                None,
                audit.RECONCILE,
                user=user,
                exchange_ms=exchange_ms,
                differences=differences,
            )

    def note_exchange_reachability(
        self, agent_id: str, url: str, *, reachable: bool, since_ms: int, down_s: float
    ) -> bool:
        """Record that the exchange at ``url`` has given no answer since ``since_ms`` (or
        answers again after ``down_s``); the first agent to see a change writes the one row."""
        with self._write(durable=False) as conn:
            return audit.note_reachability(
                conn, agent_id, url, reachable, since_ms=since_ms, down_s=round(down_s, 1)
            )

    def last_reconcile_ms(self, user: str) -> int | None:
        """The exchange time the last reconcile of ``user`` saw, or None."""
        return audit.last_reconcile_ms(self.store.conn, user)

    def fill_records(self, agent_id: str) -> list[history.FillRecord]:
        """Every fill of ``agent_id``, oldest first (signed quantities)."""
        return history.fills(self.store.conn, agent_id)

    def nav_after(
        self, agent_id: str, after_ms: int | None = None
    ) -> list[tuple[int, float, float | None]]:
        """Equity snapshots newer than ``after_ms`` as floats (time_ms, equity, nav or None).

        A throwaway ledger keeps the rows newer than the last ``after_ms`` asked, which its
        snapshots extend (``_extend_tail``): the kill switches ask each tick for the ones
        since the last they saw, so most ticks read nothing."""
        kept = self._kept_reads()
        if kept is None:
            return history.nav_after(self.store.conn, agent_id, after_ms)
        after = -1 if after_ms is None else after_ms
        key = ("nav", agent_id, None)
        tail = kept.get(key)
        if isinstance(tail, _NavTail) and tail.since <= after:
            rows = tail.rows if tail.since == after else [r for r in tail.rows if r[0] > after]
        else:
            self._flush_snapshots()
            rows = history.nav_after(self.store.conn, agent_id, after)
        kept[key] = _NavTail(after, rows)
        return list(rows)

    def operator_enables(self, agent_ids: Sequence[str]) -> dict[str, int]:
        """The time of each agent's latest enable by an operator."""
        return history.operator_enables(self.store.conn, agent_ids)

    # ----------------------------------------------------------------- health

    def integrity_check(self) -> str:
        """The store's integrity check result (``ok`` when healthy)."""
        return self.store.integrity_check()

    def schema_version(self) -> int:
        return self.store.schema_version()

    def check_writable(self) -> float:
        """A committed write that changes nothing; returns the writer-lock wait in ms.

        Raises ``LedgerError`` when the ledger cannot be written (doctor's check).
        """
        return self.store.touch()


class _NavTail(NamedTuple):
    """An agent's equity snapshots newer than ``since`` (``Ledger.nav_after``'s rows)."""

    since: int
    rows: list[NavRow]


@functools.cache
def _kinds(tables: tuple[str, ...]) -> tuple[str, ...]:
    """The kinds of kept reads a write to ``tables`` may change."""
    return tuple(k for k, deps in KEPT_TABLES.items() if not set(deps).isdisjoint(tables))


class _NarrowWrite:
    """``Ledger._write_to`` (``tables``), ``Ledger._write_for`` (``tables`` of ``owner``)
    and ``Ledger._write`` with heartbeats to write (``tables`` None): the store's write,
    carrying the heartbeats not written yet when it may read or change an agent row, then
    the kept reads it may change dropped once it committed. A plain class rather than a
    generator: the equity snapshot of every agent tick goes through it."""

    __slots__ = ("beats", "kept", "ledger", "owner", "reaped", "snaps", "tables", "write")

    def __init__(
        self,
        ledger: Ledger,
        tables: Sequence[str] | None,
        write: AbstractContextManager[Conn],
        owner: tuple[str, str | None] | None = None,
    ) -> None:
        self.ledger, self.tables, self.write, self.owner = ledger, tables, write, owner
        self.kept: dict[KeptKey, object] | None = None
        self.beats: dict[str, agents.Beat] | None = None
        self.snaps: tuple[list[books.EquityRow], dict[Any, Any]] | None = None
        self.reaped = ledger._reaper.reaped

    def __enter__(self) -> Conn:
        ledger, tables = self.ledger, self.tables
        if tables is not None:
            self.kept = ledger._kept_reads()
        conn = self.write.__enter__()
        try:
            if ledger._beats and (
                tables is None
                or self.owner is not None  # the reaper reads heartbeats
                or any(t.startswith("agent") for t in tables)
            ):
                self.beats = ledger._carry_beats(conn)
            if ledger._snaps or ledger._marks:  # any write: first in the order of writes
                self.snaps = ledger._carry_snapshots(conn)
        except BaseException as exc:
            self._uncarry()
            self.write.__exit__(type(exc), exc, exc.__traceback__)
            raise
        return conn

    def _uncarry(self) -> None:
        if self.beats is not None:
            self.ledger._uncarry(self.beats)
        if self.snaps is not None:
            self.ledger._uncarry_snapshots(self.snaps)

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        ledger = self.ledger
        try:
            self.write.__exit__(kind, exc, tb)  # raises what the write raised (suppresses none)
        except BaseException:
            self._uncarry()
            raise
        if kind is not None:
            self._uncarry()
        elif self.tables is None:
            pass  # any rows: the kept reads are all dropped (``_kept_reads``)
        elif self.owner is None:
            ledger._wrote_to(self.kept, self.tables)
        elif ledger._reaper.reaped == self.reaped:  # else someone's intent expired: all dropped
            ledger._wrote_for(self.kept, self.tables, self.owner)
