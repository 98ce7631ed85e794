"""The ledger's schema migrations: one list for every backend (append only, never edit).

Each entry is written in SQLite's dialect; ``postgres_ddl`` translates one for PostgreSQL
(64-bit integers, identity keys, double precision, the reserved word ``user`` quoted, and an
explicit ``rowid`` on ``equity`` where SQLite has an implicit one), so both backends walk the
same versions in the same order and ``schema_migrations`` means the same thing in both.
"""

from __future__ import annotations

import re
from typing import Final

MIGRATIONS: Final[tuple[tuple[str, str], ...]] = (
    (
        "initial",
        """
        CREATE TABLE accounts (
            user TEXT PRIMARY KEY,
            max_total_positions INTEGER NOT NULL,
            max_gross_leverage TEXT NOT NULL,
            equity TEXT
        );
        CREATE TABLE agents (
            agent_id TEXT PRIMARY KEY,
            user TEXT NOT NULL,
            nonce_slot INTEGER NOT NULL,
            max_positions INTEGER NOT NULL,
            enabled INTEGER NOT NULL,
            state TEXT NOT NULL,
            state_reason TEXT,
            capital TEXT NOT NULL,
            units TEXT NOT NULL,
            realized_pnl TEXT NOT NULL,
            fees TEXT NOT NULL,
            funding TEXT NOT NULL,
            hb_pid INTEGER,
            hb_ms INTEGER,
            hb_error TEXT,
            ticks INTEGER NOT NULL DEFAULT 0,
            created_ms INTEGER NOT NULL,
            UNIQUE (user, nonce_slot)
        );
        CREATE TABLE intents (
            seq INTEGER PRIMARY KEY,
            client_order_id TEXT NOT NULL UNIQUE,
            agent_id TEXT NOT NULL,
            user TEXT NOT NULL,
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            kind TEXT NOT NULL,
            margin TEXT NOT NULL,
            notional TEXT NOT NULL,
            state TEXT NOT NULL,
            pid INTEGER NOT NULL,
            created_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            sent INTEGER NOT NULL DEFAULT 0,
            margin_booked INTEGER NOT NULL DEFAULT 0,
            reason TEXT
        );
        CREATE INDEX intents_active ON intents (user, kind)
            WHERE state IN ('reserved', 'confirmed');
        CREATE INDEX intents_by_agent ON intents (agent_id, seq);
        CREATE TABLE positions (
            agent_id TEXT NOT NULL,
            symbol TEXT NOT NULL,
            user TEXT NOT NULL,
            qty TEXT NOT NULL,
            entry_price TEXT NOT NULL,
            margin TEXT NOT NULL,
            opened_ms INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL,
            PRIMARY KEY (agent_id, symbol)
        );
        CREATE INDEX positions_by_user ON positions (user, symbol);
        CREATE TABLE fills (
            agent_id TEXT NOT NULL,
            trade_id INTEGER NOT NULL,
            client_order_id TEXT NOT NULL,
            symbol TEXT NOT NULL,
            side TEXT NOT NULL,
            qty TEXT NOT NULL,
            price TEXT NOT NULL,
            realized_pnl TEXT NOT NULL,
            commission TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            PRIMARY KEY (agent_id, trade_id)
        );
        CREATE TABLE funding (
            agent_id TEXT NOT NULL,
            tran_id INTEGER NOT NULL,
            symbol TEXT NOT NULL,
            amount TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            PRIMARY KEY (agent_id, tran_id)
        );
        CREATE TABLE equity (
            agent_id TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            equity TEXT NOT NULL
        );
        CREATE INDEX equity_by_agent ON equity (agent_id, time_ms);
        CREATE TABLE audit (
            id INTEGER PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            agent_id TEXT,
            event TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE TABLE budgets (
            key TEXT PRIMARY KEY,
            tokens REAL NOT NULL,
            capacity REAL NOT NULL,
            refill_per_s REAL NOT NULL,
            updated_s REAL NOT NULL
        );
        CREATE TABLE host_pause (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            until_s REAL NOT NULL,
            reason TEXT NOT NULL
        );
        """,
    ),
    (
        "accounting",
        """
        ALTER TABLE accounts ADD COLUMN unallocated TEXT;
        ALTER TABLE accounts ADD COLUMN equity_ms INTEGER;
        ALTER TABLE accounts ADD COLUMN opened_ms INTEGER;
        ALTER TABLE equity ADD COLUMN units TEXT;
        ALTER TABLE equity ADD COLUMN nav TEXT;
        CREATE TABLE rebalances (
            id INTEGER PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            reason TEXT NOT NULL,
            detail TEXT NOT NULL
        );
        CREATE TABLE marks (
            user TEXT NOT NULL,
            symbol TEXT NOT NULL,
            mark TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            PRIMARY KEY (user, symbol)
        );
        CREATE TABLE income (
            user TEXT NOT NULL,
            source TEXT NOT NULL,
            agent_id TEXT,
            kind TEXT NOT NULL,
            symbol TEXT NOT NULL,
            amount TEXT NOT NULL,
            time_ms INTEGER NOT NULL,
            PRIMARY KEY (user, source)
        );
        CREATE INDEX income_by_time ON income (user, kind, time_ms);
        """,
    ),
    (
        "intent-nonce",
        """
        ALTER TABLE intents ADD COLUMN nonce INTEGER;
        """,
    ),
    (
        "operations",
        """
        CREATE TABLE counters (
            name TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            labels TEXT NOT NULL,
            value REAL NOT NULL,
            PRIMARY KEY (name, agent_id, labels)
        ) WITHOUT ROWID;
        INSERT INTO counters (name, agent_id, labels, value)
            SELECT 'audit', COALESCE(agent_id, ''), json_object('event', event), COUNT(*)
            FROM audit GROUP BY 1, 2, 3;
        CREATE INDEX audit_by_event ON audit (event, id);
        CREATE TRIGGER audit_counts AFTER INSERT ON audit BEGIN
            INSERT INTO counters (name, agent_id, labels, value)
            VALUES ('audit', COALESCE(NEW.agent_id, ''), json_object('event', NEW.event), 1)
            ON CONFLICT (name, agent_id, labels) DO UPDATE SET value = value + 1;
        END;
        CREATE TABLE notify_state (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            audit_id INTEGER NOT NULL,
            summary_day TEXT
        );
        CREATE TABLE notify_sent (
            id INTEGER PRIMARY KEY,
            time_ms INTEGER NOT NULL,
            first_audit_id INTEGER,
            last_audit_id INTEGER,
            events INTEGER NOT NULL,
            title TEXT NOT NULL
        );
        """,
    ),
    (
        "hosts",
        """
        ALTER TABLE intents ADD COLUMN host TEXT;
        ALTER TABLE agents ADD COLUMN hb_host TEXT;
        """,
    ),
    (
        # the local time a fill was booked: the clock of the equity snapshots, which the
        # exchange's trade time is not on a simulator whose market runs faster (metrics)
        "fill-booked-time",
        """
        ALTER TABLE fills ADD COLUMN booked_ms INTEGER;
        """,
    ),
    (
        # the notifier's message in flight (JSON), written before it is handed to Apprise so
        # a restart resends the very same message, with the same id, instead of regrouping
        "notify-sending",
        """
        ALTER TABLE notify_state ADD COLUMN sending TEXT;
        """,
    ),
    (
        # a 429/418 pauses the hosts behind one IP (a rate group, see ledger/budget.py), not
        # one ledger: several hosts share a PostgreSQL ledger; a pause in force carries over
        "rate-groups",
        """
        CREATE TABLE rate_pauses (
            grp TEXT PRIMARY KEY,
            until_s REAL NOT NULL,
            reason TEXT NOT NULL
        );
        INSERT INTO rate_pauses (grp, until_s, reason) SELECT 'ip', until_s, reason FROM host_pause;
        """,
    ),
    (
        # PostgreSQL only (nothing on SQLite): ``ledger_reserve_open``, ``ledger_transition``
        # and ``ledger_mark_sent``, the common intent writes in one round trip each (see
        # POSTGRES_FORMS and ``intents.Outcome``)
        "intent-functions",
        "",
    ),
    (
        # SQLite: audit rows are counted in batches (``sqlite.SqliteStore`` folds the rows past
        # the mark into ``counters`` about once a second; readers add the rows not yet folded),
        # not by a trigger that rewrote a ``counters`` page in every transaction. PostgreSQL
        # keeps its trigger and has no mark (its form below changes nothing).
        "audit-counts-folded",
        """
        DROP TRIGGER audit_counts;
        INSERT INTO counters (name, agent_id, labels, value)
            SELECT 'audit_counted_to_id', '', '{}', COALESCE(MAX(id), 0) FROM audit;
        """,
    ),
    (
        # SQLite: the events of every order's path (most audit rows) leave the event index,
        # so an order's commits write no index page; readers by event repeat the condition
        # (``rows.INDEXED_EVENTS``). PostgreSQL keeps its full index (its form is a no-op).
        # Not ``NOT IN (...)``: SQLite builds an ephemeral table for that list on every insert.
        "audit-by-event-partial",
        """
        DROP INDEX audit_by_event;
        CREATE INDEX audit_by_event ON audit (event, id)
            WHERE event <> 'reserve' AND event <> 'sent' AND event <> 'confirmed'
                AND event <> 'released' AND event <> 'fill' AND event <> 'intent_filled';
        """,
    ),
    (
        # An agent's questions about its own intents (each tick: its unresolved intents and
        # the opens its row counts; a reallocation: their margin) ask for the few that are
        # not resolved; the index on (agent_id, seq) made each of them read every intent the
        # agent ever had, a cost that grew for as long as the agent ran. One partial index
        # holds only the unresolved ones (``rows.UNRESOLVED``, which each such query repeats
        # so SQLite uses it); nothing else asked intents by agent.
        "intents-unresolved-by-agent",
        """
        DROP INDEX intents_by_agent;
        CREATE INDEX intents_unresolved_by_agent ON intents (agent_id, seq)
            WHERE state IN ('reserved', 'confirmed') OR (state = 'expired' AND sent = 1);
        """,
    ),
    (
        # PostgreSQL only (nothing on SQLite): the intent functions take their own locks (the
        # account's, see ``postgres.PostgresStore.call``) so each is one statement, prepared
        # once per session; intent seqs come from the identity sequence of ``intents.seq``
        # (writers of two accounts run at once: ``MAX(seq) + 1`` would give both the same)
        "intent-functions-per-account",
        "",
    ),
    (
        # the run that wrote the heartbeat ended normally (Ctrl-C, SIGTERM, `down`): another
        # host tells a stop from a crash by it (it cannot look at this host's lock file)
        "heartbeat-clean-stop",
        """
        ALTER TABLE agents ADD COLUMN hb_stopped INTEGER NOT NULL DEFAULT 0;
        """,
    ),
)

# ``user`` is a reserved word in PostgreSQL (unquoted it means CURRENT_USER); quoted, both
# databases read it as the column.
USER_WORD: Final = re.compile(r'(?<![\w"])user(?![\w"])')


# Migrations whose SQLite text has no mechanical PostgreSQL form (a trigger, JSON functions):
# their PostgreSQL text, kept here next to the list. Counter labels are the compact JSON the
# SQLite trigger's json_object() writes, built by hand so both databases store the same text.
POSTGRES_FORMS: Final = {
    "audit-counts-folded": "SELECT 1",
    "audit-by-event-partial": "SELECT 1",
    "operations": """
        CREATE TABLE counters (
            name TEXT NOT NULL,
            agent_id TEXT NOT NULL,
            labels TEXT NOT NULL,
            value DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (name, agent_id, labels)
        );
        INSERT INTO counters (name, agent_id, labels, value)
            SELECT 'audit', COALESCE(agent_id, ''), '{"event":' || to_json(event)::text || '}',
                COUNT(*)
            FROM audit GROUP BY 1, 2, 3;
        CREATE INDEX audit_by_event ON audit (event, id);
        CREATE FUNCTION audit_counts() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO counters (name, agent_id, labels, value)
            VALUES ('audit', COALESCE(NEW.agent_id, ''),
                    '{"event":' || to_json(NEW.event)::text || '}', 1)
            ON CONFLICT (name, agent_id, labels) DO UPDATE SET value = counters.value + 1;
            RETURN NULL;
        END $$;
        CREATE TRIGGER audit_counts AFTER INSERT ON audit
            FOR EACH ROW EXECUTE FUNCTION audit_counts();
        CREATE TABLE notify_state (
            id BIGINT PRIMARY KEY CHECK (id = 1),
            audit_id BIGINT NOT NULL,
            summary_day TEXT
        );
        CREATE TABLE notify_sent (
            id BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            time_ms BIGINT NOT NULL,
            first_audit_id BIGINT,
            last_audit_id BIGINT,
            events BIGINT NOT NULL,
            title TEXT NOT NULL
        );
    """,
    # The check of ``limits.denial`` for an ``open`` and the row ``intents.reserve`` writes,
    # in one call: the whole critical section runs in the server, so the advisory lock is
    # never held across a round trip to the agent. It only grants: any denial returns no row
    # and the caller runs the full check in Python (which reaps, re-checks, says why and
    # counts it), so the Python code stays the one place that words and counts a denial.
    # Amounts are compared as exact numerics (Python's Decimal rounds to 28 digits: the two
    # agree on every amount the ledger stores). ``p_detail`` is the audit detail with the
    # client order id left as "?" (it is only known here, from the seq).
    "intent-functions": """
        CREATE FUNCTION ledger_reserve_open(
            p_agent TEXT, p_symbol TEXT, p_side TEXT, p_margin TEXT, p_notional TEXT,
            p_pid BIGINT, p_now BIGINT, p_ttl BIGINT, p_note TEXT, p_host TEXT, p_detail TEXT
        ) RETURNS TABLE (r_seq BIGINT, r_coid TEXT, r_user TEXT)
        LANGUAGE plpgsql AS $$
        DECLARE
            a RECORD;
            s RECORD;
            v_gross NUMERIC;
            v_used NUMERIC;
            v_seq BIGINT;
            v_coid TEXT;
        BEGIN
            SELECT g."user" AS owner, g.enabled, g.max_positions,
                   g.capital::numeric + g.realized_pnl::numeric - g.fees::numeric
                       + g.funding::numeric AS book_equity,
                   c.max_total_positions AS account_max, c.max_gross_leverage::numeric AS lev,
                   c.equity::numeric AS equity
              INTO a
              FROM agents g LEFT JOIN accounts c ON c."user" = g."user"
             WHERE g.agent_id = p_agent;
            IF NOT FOUND OR a.enabled = 0 OR a.account_max IS NULL THEN
                RETURN;
            END IF;
            SELECT COALESCE(bool_or(t.agent_id <> p_agent AND t.symbol = p_symbol), FALSE)
                       AS others,
                   COALESCE(bool_or(t.agent_id = p_agent AND t.symbol = p_symbol), FALSE)
                       AS here,
                   count(*) FILTER (WHERE t.agent_id = p_agent) AS mine,
                   count(*) AS slots
              INTO s
              FROM (SELECT p.symbol, p.agent_id FROM positions p WHERE p."user" = a.owner
                    UNION
                    SELECT i.symbol, i.agent_id FROM intents i
                     WHERE i.state IN ('reserved', 'confirmed') AND i.kind = 'open'
                       AND i."user" = a.owner) t;
            IF s.others THEN
                RETURN;
            END IF;
            IF NOT s.here AND (s.mine >= a.max_positions OR s.slots >= a.account_max) THEN
                RETURN;
            END IF;
            SELECT COALESCE(sum(abs(p.qty::numeric) * p.entry_price::numeric), 0),
                   COALESCE(sum(p.margin::numeric) FILTER (WHERE p.agent_id = p_agent), 0)
              INTO v_gross, v_used
              FROM positions p WHERE p."user" = a.owner;
            SELECT v_gross + COALESCE(sum(i.notional::numeric), 0),
                   v_used + COALESCE(sum(i.margin::numeric) FILTER (WHERE i.agent_id = p_agent), 0)
              INTO v_gross, v_used
              FROM intents i
             WHERE i.state IN ('reserved', 'confirmed') AND i.kind = 'open'
               AND i."user" = a.owner AND i.margin_booked = 0;
            IF a.equity IS NOT NULL AND a.lev IS NOT NULL
               AND v_gross + p_notional::numeric > a.lev * a.equity THEN
                RETURN;
            END IF;
            IF p_margin::numeric > a.book_equity - v_used THEN
                RETURN;
            END IF;
            SELECT COALESCE(max(i.seq), 0) + 1 INTO v_seq FROM intents i;
            v_coid := p_agent || '-'
                || CASE WHEN v_seq < 1000000 THEN lpad(v_seq::text, 6, '0') ELSE v_seq::text END
                || '-open';
            IF length(v_coid) > 36 THEN
                v_coid := left(v_coid, length(v_coid) - 3);
            END IF;
            IF v_coid !~ '^[A-Za-z0-9_-]{1,36}$' THEN
                RETURN;
            END IF;
            INSERT INTO intents (seq, client_order_id, agent_id, "user", symbol, side, kind,
                                 margin, notional, state, pid, created_ms, expires_ms,
                                 updated_ms, reason, host)
            VALUES (v_seq, v_coid, p_agent, a.owner, p_symbol, p_side, 'open', p_margin,
                    p_notional, 'reserved', p_pid, p_now, p_now + p_ttl, p_now, p_note, p_host);
            INSERT INTO audit (time_ms, agent_id, event, detail)
            VALUES (p_now, p_agent, 'reserve',
                    replace(p_detail, '"coid": "?"', '"coid": "' || v_coid || '"'));
            RETURN QUERY SELECT v_seq, v_coid, a.owner;
        END $$;
        -- ``intents.transition`` and ``intents.mark_sent`` with their audit rows, in one call
        -- each (a plan the session keeps, where a statement would be planned every time)
        CREATE FUNCTION ledger_transition(
            p_coid TEXT, p_from TEXT[], p_to TEXT, p_reason TEXT, p_now BIGINT, p_detail TEXT
        ) RETURNS TEXT
        LANGUAGE plpgsql AS $$
        DECLARE
            v_agent TEXT;
        BEGIN
            UPDATE intents SET state = p_to, reason = COALESCE(p_reason, reason),
                   updated_ms = p_now
             WHERE client_order_id = p_coid AND state = ANY (p_from)
            RETURNING agent_id INTO v_agent;
            IF FOUND THEN
                INSERT INTO audit (time_ms, agent_id, event, detail)
                VALUES (p_now, v_agent, p_to, p_detail);
            END IF;
            RETURN v_agent;
        END $$;
        CREATE FUNCTION ledger_mark_sent(
            p_coid TEXT, p_nonce BIGINT, p_now BIGINT, p_detail TEXT
        ) RETURNS TABLE (r_agent TEXT, r_known BOOLEAN)
        LANGUAGE plpgsql AS $$
        DECLARE
            v_agent TEXT;
        BEGIN
            UPDATE intents SET sent = 1, nonce = p_nonce, updated_ms = p_now
             WHERE client_order_id = p_coid AND state = 'reserved'
            RETURNING agent_id INTO v_agent;
            IF FOUND THEN
                INSERT INTO audit (time_ms, agent_id, event, detail)
                VALUES (p_now, v_agent, 'sent', p_detail);
                RETURN QUERY SELECT v_agent, TRUE;
            ELSE
                RETURN QUERY SELECT NULL::text,
                    EXISTS (SELECT 1 FROM intents WHERE client_order_id = p_coid);
            END IF;
        END $$;
    """,  # The same three functions taking the account's lock themselves (``ledger_lock_account``),
    # each called alone as a prepared statement in its own transaction: the intent's account
    # is read first (an intent's never changes; an agent whose account changed before the
    # lock is not granted here, and the caller's full path decides under the ledger's lock).
    "intent-functions-per-account": """
        DROP FUNCTION ledger_reserve_open(TEXT, TEXT, TEXT, TEXT, TEXT, BIGINT, BIGINT, BIGINT,
                                          TEXT, TEXT, TEXT);
        DROP FUNCTION ledger_transition(TEXT, TEXT[], TEXT, TEXT, BIGINT, TEXT);
        DROP FUNCTION ledger_mark_sent(TEXT, BIGINT, BIGINT, TEXT);
        SELECT setval(pg_get_serial_sequence('intents', 'seq'),
                      GREATEST((SELECT MAX(seq) FROM intents), 1),
                      (SELECT MAX(seq) FROM intents) IS NOT NULL);
        -- the account's lock: shared on the ledger's key (a ledger-wide writer holds it
        -- alone), exclusive on (p_space, the account); asynchronous commit, as every write
        CREATE FUNCTION ledger_lock_account(p_ledger BIGINT, p_space INTEGER, p_user TEXT)
        RETURNS VOID LANGUAGE plpgsql AS $$
        BEGIN  -- plpgsql: its plan is kept by the session (a SQL function's is made per call)
            PERFORM set_config('synchronous_commit', 'off', true),
                    pg_advisory_xact_lock_shared(p_ledger),
                    pg_advisory_xact_lock(p_space, hashtext(p_user));
        END $$;
        CREATE FUNCTION ledger_reserve_open(
            p_ledger BIGINT, p_space INTEGER,
            p_agent TEXT, p_symbol TEXT, p_side TEXT, p_margin TEXT, p_notional TEXT,
            p_pid BIGINT, p_now BIGINT, p_ttl BIGINT, p_note TEXT, p_host TEXT, p_detail TEXT
        ) RETURNS TABLE (r_seq BIGINT, r_coid TEXT, r_user TEXT)
        LANGUAGE plpgsql AS $$
        DECLARE
            a RECORD;
            s RECORD;
            v_gross NUMERIC;
            v_used NUMERIC;
            v_seq BIGINT;
            v_coid TEXT;
            v_owner TEXT;
        BEGIN
            SELECT g."user" INTO v_owner FROM agents g WHERE g.agent_id = p_agent;
            IF NOT FOUND THEN
                RETURN;
            END IF;
            PERFORM ledger_lock_account(p_ledger, p_space, v_owner);
            SELECT g."user" AS owner, g.enabled, g.max_positions,
                   g.capital::numeric + g.realized_pnl::numeric - g.fees::numeric
                       + g.funding::numeric AS book_equity,
                   c.max_total_positions AS account_max, c.max_gross_leverage::numeric AS lev,
                   c.equity::numeric AS equity
              INTO a
              FROM agents g LEFT JOIN accounts c ON c."user" = g."user"
             WHERE g.agent_id = p_agent;
            IF NOT FOUND OR a.owner <> v_owner OR a.enabled = 0 OR a.account_max IS NULL THEN
                RETURN;
            END IF;
            SELECT COALESCE(bool_or(t.agent_id <> p_agent AND t.symbol = p_symbol), FALSE)
                       AS others,
                   COALESCE(bool_or(t.agent_id = p_agent AND t.symbol = p_symbol), FALSE)
                       AS here,
                   count(*) FILTER (WHERE t.agent_id = p_agent) AS mine,
                   count(*) AS slots
              INTO s
              FROM (SELECT p.symbol, p.agent_id FROM positions p WHERE p."user" = a.owner
                    UNION
                    SELECT i.symbol, i.agent_id FROM intents i
                     WHERE i.state IN ('reserved', 'confirmed') AND i.kind = 'open'
                       AND i."user" = a.owner) t;
            IF s.others THEN
                RETURN;
            END IF;
            IF NOT s.here AND (s.mine >= a.max_positions OR s.slots >= a.account_max) THEN
                RETURN;
            END IF;
            SELECT COALESCE(sum(abs(p.qty::numeric) * p.entry_price::numeric), 0),
                   COALESCE(sum(p.margin::numeric) FILTER (WHERE p.agent_id = p_agent), 0)
              INTO v_gross, v_used
              FROM positions p WHERE p."user" = a.owner;
            SELECT v_gross + COALESCE(sum(i.notional::numeric), 0),
                   v_used + COALESCE(sum(i.margin::numeric) FILTER (WHERE i.agent_id = p_agent), 0)
              INTO v_gross, v_used
              FROM intents i
             WHERE i.state IN ('reserved', 'confirmed') AND i.kind = 'open'
               AND i."user" = a.owner AND i.margin_booked = 0;
            IF a.equity IS NOT NULL AND a.lev IS NOT NULL
               AND v_gross + p_notional::numeric > a.lev * a.equity THEN
                RETURN;
            END IF;
            IF p_margin::numeric > a.book_equity - v_used THEN
                RETURN;
            END IF;
            v_seq := nextval('intents_seq_seq');
            v_coid := p_agent || '-'
                || CASE WHEN v_seq < 1000000 THEN lpad(v_seq::text, 6, '0') ELSE v_seq::text END
                || '-open';
            IF length(v_coid) > 36 THEN
                v_coid := left(v_coid, length(v_coid) - 3);
            END IF;
            IF v_coid !~ '^[A-Za-z0-9_-]{1,36}$' THEN
                RETURN;
            END IF;
            INSERT INTO intents (seq, client_order_id, agent_id, "user", symbol, side, kind,
                                 margin, notional, state, pid, created_ms, expires_ms,
                                 updated_ms, reason, host)
            VALUES (v_seq, v_coid, p_agent, a.owner, p_symbol, p_side, 'open', p_margin,
                    p_notional, 'reserved', p_pid, p_now, p_now + p_ttl, p_now, p_note, p_host);
            INSERT INTO audit (time_ms, agent_id, event, detail)
            VALUES (p_now, p_agent, 'reserve',
                    replace(p_detail, '"coid": "?"', '"coid": "' || v_coid || '"'));
            RETURN QUERY SELECT v_seq, v_coid, a.owner;
        END $$;
        -- ``intents.transition`` and ``intents.mark_sent`` with their audit rows, in one call
        -- each (a plan the session keeps, where a statement would be planned every time)
        CREATE FUNCTION ledger_transition(
            p_ledger BIGINT, p_space INTEGER,
            p_coid TEXT, p_from TEXT[], p_to TEXT, p_reason TEXT, p_now BIGINT, p_detail TEXT
        ) RETURNS TEXT
        LANGUAGE plpgsql AS $$
        DECLARE
            v_agent TEXT;
            v_user TEXT;
        BEGIN
            SELECT "user" INTO v_user FROM intents WHERE client_order_id = p_coid;
            IF NOT FOUND THEN
                RETURN NULL;
            END IF;
            PERFORM ledger_lock_account(p_ledger, p_space, v_user);
            UPDATE intents SET state = p_to, reason = COALESCE(p_reason, reason),
                   updated_ms = p_now
             WHERE client_order_id = p_coid AND state = ANY (p_from)
            RETURNING agent_id INTO v_agent;
            IF FOUND THEN
                INSERT INTO audit (time_ms, agent_id, event, detail)
                VALUES (p_now, v_agent, p_to, p_detail);
            END IF;
            RETURN v_agent;
        END $$;
        CREATE FUNCTION ledger_mark_sent(
            p_ledger BIGINT, p_space INTEGER,
            p_coid TEXT, p_nonce BIGINT, p_now BIGINT, p_detail TEXT
        ) RETURNS TABLE (r_agent TEXT, r_known BOOLEAN)
        LANGUAGE plpgsql AS $$
        DECLARE
            v_agent TEXT;
            v_user TEXT;
        BEGIN
            SELECT "user" INTO v_user FROM intents WHERE client_order_id = p_coid;
            IF NOT FOUND THEN
                RETURN QUERY SELECT NULL::text, FALSE;
                RETURN;
            END IF;
            PERFORM ledger_lock_account(p_ledger, p_space, v_user);
            UPDATE intents SET sent = 1, nonce = p_nonce, updated_ms = p_now
             WHERE client_order_id = p_coid AND state = 'reserved'
            RETURNING agent_id INTO v_agent;
            IF FOUND THEN
                INSERT INTO audit (time_ms, agent_id, event, detail)
                VALUES (p_now, v_agent, 'sent', p_detail);
                RETURN QUERY SELECT v_agent, TRUE;
            ELSE
                RETURN QUERY SELECT NULL::text, TRUE;
            END IF;
        END $$;
    """,
}


def postgres_ddl(name: str, sql: str) -> str:
    """One migration's SQL in PostgreSQL's dialect: its own form, or the SQLite text
    translated (64-bit integers, identity keys, double precision, ``user`` quoted)."""
    if name in POSTGRES_FORMS:
        return POSTGRES_FORMS[name]
    out = USER_WORD.sub('"user"', sql)
    out = out.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY")
    out = re.sub(r"\bINTEGER\b", "BIGINT", out)
    out = re.sub(r"\bREAL\b", "DOUBLE PRECISION", out)
    return out.replace(
        "CREATE TABLE equity (", "CREATE TABLE equity (\n            rowid BIGSERIAL NOT NULL,"
    )
