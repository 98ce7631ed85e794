"""``aster-agent notify``: ledger events delivered through a real Apprise ``json://`` receiver."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from aster_agents.config.schema import load_fleet
from aster_agents.config.view import LEDGER_URL_ENV
from aster_agents.errors import ConfigError
from aster_agents.ledger import Ledger
from aster_agents.ledger.notify import NotifyStore, SentMessage
from aster_agents.sim.server import SimServer
from tests.kit.agents import Fleet, make_fleet
from tests.kit.proxy import HoldingProxy
from tests.kit.wait import wait_for
from tests.plugins.postgres import PgServer

URLS_ENV = "ASTER_AGENTS_NOTIFY_URLS"


class Receiver:
    """A local webhook: every POST body (Apprise's JSON) is kept in order."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []
        self.kill_pid: int | None = None  # SIGKILLed on the next message, before the reply
        received = self.messages
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                received.append(json.loads(body))
                if receiver.kill_pid is not None:
                    os.kill(receiver.kill_pid, signal.SIGKILL)
                    receiver.kill_pid = None
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.server.server_port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def by_id(self) -> dict[str, list[dict[str, Any]]]:
        """Messages grouped by the id on their last line (what a deduplicating receiver keeps)."""
        out: dict[str, list[dict[str, Any]]] = {}
        for m in self.messages:
            last = m["message"].rsplit("\n", 1)[-1]
            assert last.startswith("id: aster-"), m
            out.setdefault(last.removeprefix("id: "), []).append(m)
        return out


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    try:
        yield r
    finally:
        r.close()


def notify_fleet(root: Path, sim: SimServer, agents: list[str], extra: str = "") -> Fleet:
    fleet = make_fleet(root, sim, agents)
    with (fleet.config_dir / "_portfolio.yaml").open("a") as f:
        f.write(f"notify:\n  poll_seconds: 0.2\n  group_seconds: 3\n{extra}")
    with Ledger(fleet.state_dir) as ledger:
        for agent in agents:
            ledger.register_agent(agent, fleet.user, max_positions=2, enabled=True)
    return fleet


def start_notify(fleet: Fleet, url: str) -> subprocess.Popen[str]:
    """Run ``notify`` and wait for its "watching" line."""
    proc = subprocess.Popen(
        fleet.command("notify"),
        env=fleet.env({URLS_ENV: url}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    assert ready and proc.stdout.readline().startswith("notify: watching")
    return proc


def end(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> int:
    proc.send_signal(sig)
    proc.communicate(timeout=15)
    return proc.returncode


def sent(fleet: Fleet) -> list[SentMessage]:
    with NotifyStore(fleet.state_dir) as store:
        return store.messages()


def disable(fleet: Fleet, *agents: str) -> None:
    with Ledger(fleet.state_dir) as ledger:
        for agent in agents:
            ledger.set_state(agent, "disabled", "kill switch: drawdown 21% >= 20%")


def test_each_event_once_across_sigkill_and_restart(
    tmp_path: Path, sim_server: SimServer, receiver: Receiver
) -> None:
    """SIGKILL after a delivery, restart: nothing is resent, the next event arrives once."""
    fleet = notify_fleet(
        tmp_path, sim_server, ["agent-1", "agent-2"], '  daily_summary_utc: "00:00"\n'
    )
    proc = start_notify(fleet, receiver.url)
    try:
        wait_for(lambda: len(sent(fleet)) == 1, 30, "the daily summary")
        disable(fleet, "agent-1")
        wait_for(lambda: len(sent(fleet)) == 2, 30, "the first alert recorded as sent")
    finally:
        assert end(proc, signal.SIGKILL) == -signal.SIGKILL
    disable(fleet, "agent-2")
    proc = start_notify(fleet, receiver.url)
    try:
        wait_for(lambda: len(sent(fleet)) == 3, 30, "the second alert recorded as sent")
    finally:
        assert end(proc) == 0
    titles = [m["title"] for m in receiver.messages]
    assert len(titles) == 3, titles
    assert "daily summary" in titles[0]
    assert "agent-1 DISABLED" in titles[1] and "agent-2" not in titles[1]
    assert "agent-2 DISABLED" in titles[2] and "agent-1" not in titles[2]
    assert "kill switch" in receiver.messages[1]["message"]


def test_ten_simultaneous_failures_give_one_grouped_message(
    tmp_path: Path, sim_server: SimServer, receiver: Receiver
) -> None:
    """Ten agents disabled together (a portfolio kill): one message naming all ten."""
    agents = [f"agent-{n}" for n in range(1, 11)]
    fleet = notify_fleet(tmp_path, sim_server, agents, "  daily_summary_utc: null\n")
    proc = start_notify(fleet, receiver.url)
    try:
        disable(fleet, *agents)
        wait_for(lambda: sent(fleet), 30, "the grouped message recorded as sent")
    finally:
        assert end(proc) == 0
    assert [m.events for m in sent(fleet)] == [10]
    assert len(receiver.messages) == 1
    message = receiver.messages[0]
    assert "10 events" in message["title"]
    assert all(f"{a} DISABLED" in message["message"] for a in agents)


def test_a_url_in_yaml_is_refused_without_echoing_it(tmp_path: Path, sim_server: SimServer) -> None:
    """notify.urls in _portfolio.yaml: one error naming the key and the env var, no token."""
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"])
    with (fleet.config_dir / "_portfolio.yaml").open("a") as f:
        f.write('notify:\n  urls: "tgram://123456:SECRETTOKEN/42"\n')
    with pytest.raises(ConfigError) as caught:
        load_fleet(fleet.config_dir)
    text = "\n".join(caught.value.problems)
    assert "notify.urls" in text and URLS_ENV in text and "SECRETTOKEN" not in text


def test_missing_or_bad_urls_exit_2_without_the_value(
    tmp_path: Path, sim_server: SimServer
) -> None:
    """An empty or invalid URL variable: exit 2, one line naming the variable, no value."""
    fleet = notify_fleet(tmp_path, sim_server, ["agent-1"])
    for value in ("", "notascheme://SECRETTOKEN"):
        done = subprocess.run(
            fleet.command("notify"),
            env=fleet.env({URLS_ENV: value}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2, done.stderr
        assert URLS_ENV in done.stderr and "SECRETTOKEN" not in done.stderr
        assert done.stderr.strip().count("\n") == 0


def test_alert_texts_for_ledger_events() -> None:
    """Liquidation, 418 ban, reconcile over the threshold, write-off and repeated rejections."""
    from aster_agents.config.schema import NotifyConfig
    from aster_agents.fleet.notify import Rejections, alert_for
    from aster_agents.ledger.rows import AuditEntry

    cfg = NotifyConfig(reconcile_threshold=2)

    def text(event: str, agent: str | None = "agent-3", **detail: object) -> str | None:
        alert = alert_for(AuditEntry(1, 0, agent, event, json.dumps(detail)), cfg)
        return None if alert is None else alert.text

    liq = text("liquidation", symbol="BTCUSDT", qty="-0.01", price="61000", realized_pnl="-120")
    assert liq == "agent-3 liquidated on BTCUSDT: qty -0.01 at 61000, realized P&L -120"
    ban = text("pause", None, until=0, reason="GET /fapi/v3/order: HTTP 418 banned until 1")
    assert ban is not None and ban.startswith("418 ban: every agent on the host paused until")
    assert text("reconcile", None, user="0xabc", differences=1) is None
    assert text("reconcile", None, user="0xabc", differences=2) is not None
    assert text("position_closed", symbol="ETHUSDT") is None  # an ordinary close by a fill
    assert "written off" in (text("position_closed", symbol="ETHUSDT", reason="flat") or "")
    assert text("fill", coid="x") is None
    rejections = Rejections(threshold=3, window_ms=60_000)
    got = [
        rejections.feed(AuditEntry(n, n * 1000, "agent-1", "intent_rejected", "{}"))
        for n in (1, 2, 3)
    ]
    assert got[:2] == [None, None] and got[2] is not None and "3 orders rejected" in got[2].text


def test_a_message_accepted_before_a_sigkill_is_resent_under_the_same_id(
    tmp_path: Path, sim_server: SimServer, receiver: Receiver
) -> None:
    """Killed between the receiver's accept and the commit: the copy has the same id and body."""
    fleet = notify_fleet(
        tmp_path, sim_server, ["agent-1", "agent-2"], "  daily_summary_utc: null\n"
    )
    proc = start_notify(fleet, receiver.url)
    receiver.kill_pid = proc.pid  # the receiver keeps the message, then kills the sender
    disable(fleet, "agent-1")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL and len(receiver.messages) == 1
    assert sent(fleet) == []  # accepted, never recorded as delivered
    disable(fleet, "agent-2")  # arrives while the notifier is down
    proc = start_notify(fleet, receiver.url)
    try:
        wait_for(lambda: len(sent(fleet)) == 2, 30, "both messages recorded as sent")
    finally:
        assert end(proc) == 0
    assert len(receiver.messages) == 3
    first, again, second = receiver.messages
    assert again == first  # the very same message, not regrouped with agent-2's event
    unique = receiver.by_id()
    assert len(unique) == 2
    texts = [copies[0]["message"] for copies in unique.values()]
    assert sum("agent-1 DISABLED" in t for t in texts) == 1
    assert sum("agent-2 DISABLED" in t for t in texts) == 1
    assert "agent-1" not in second["message"]


def test_reachability_rows_once_per_change_however_many_agents_see_it(state_dir: Path) -> None:
    """Two agents report one outage and its end: one row each; a recovery needs an outage."""
    url = "http://127.0.0.1:9/"
    with Ledger(state_dir) as ledger:

        def note(agent: str, reachable: bool) -> bool:
            return ledger.note_exchange_reachability(
                agent, url, reachable=reachable, since_ms=1, down_s=5
            )

        assert not note("agent-1", True)
        assert note("agent-1", False) and not note("agent-2", False)
        assert not ledger.note_exchange_reachability(
            "agent-1", url + "x", reachable=True, since_ms=1, down_s=5
        )
        assert note("agent-2", True) and not note("agent-1", True)
        assert note("agent-2", False)
        events = [e.event for e in reversed(ledger.audit(100)) if e.event.startswith("exchange")]
    assert events == ["exchange_unreachable", "exchange_reachable", "exchange_unreachable"]


def test_exchange_unreachable_for_n_seconds_then_back_is_one_alert_each(
    tmp_path: Path, sim_server: SimServer, receiver: Receiver
) -> None:
    """Two agents cut off from the exchange by a proxy: one outage alert, then one recovery."""
    agents = ["agent-1", "agent-2"]
    notify = "notify:\n  poll_seconds: 0.2\n  group_seconds: 0.5\n  daily_summary_utc: null\n"
    notify += "  repeat_minutes: 60\n  unreachable_minutes: 0.05\n"  # 3 s
    fleet = make_fleet(
        tmp_path, sim_server, agents, params="{p_enter: 0.0, p_exit: 0.0}", portfolio_extra=notify
    )
    with HoldingProxy(sim_server.base_url, hold=lambda m, p, n: False) as proxy:
        url = proxy.start()
        for agent in agents:
            path = fleet.config_dir / f"{agent}.yaml"
            path.write_text(path.read_text().replace(sim_server.base_url, url))
            fleet.start(agent)
        notifier = start_notify(fleet, receiver.url)
        try:
            wait_for(lambda: ticked(fleet, agents), 60, "both agents ticking")
            proxy.cut = True
            wait_for(lambda: texts(receiver, "unreachable for"), 60, "the outage alert")
            proxy.cut = False
            wait_for(lambda: texts(receiver, "reachable again"), 60, "the recovery alert")
        finally:
            assert end(notifier) == 0
            assert fleet.stop_all() == dict.fromkeys(agents, 0)
    assert len(texts(receiver, "unreachable for")) == 1
    assert len(texts(receiver, "reachable again")) == 1
    assert f"exchange {url} unreachable for" in texts(receiver, "unreachable for")[0]
    with Ledger(fleet.state_dir) as ledger:
        rows = [e for e in ledger.audit(10_000) if e.event.startswith("exchange_")]
    assert sorted(e.event for e in rows) == ["exchange_reachable", "exchange_unreachable"]


def ticked(fleet: Fleet, agents: list[str]) -> bool:
    with Ledger(fleet.state_dir) as ledger:
        rows = {a: ledger.agent(a) for a in agents}
    return all(r is not None and r.ticks > 0 for r in rows.values())


def texts(receiver: Receiver, needle: str) -> list[str]:
    """The message lines (across every received message) that contain ``needle``."""
    lines = (line for m in list(receiver.messages) for line in m["message"].splitlines())
    return [line for line in lines if needle in line]


def test_ledger_unreachable_is_sent_directly_then_its_recovery_once(
    tmp_path: Path, sim_server: SimServer, receiver: Receiver, pg_server: PgServer, pg_url: str
) -> None:
    """The notifier's PostgreSQL role refused for a while: one direct alert, one recovery."""
    notify = "notify:\n  poll_seconds: 0.2\n  group_seconds: 0.2\n  daily_summary_utc: null\n"
    notify += "  unreachable_minutes: 0.05\n"  # 3 s
    fleet = make_fleet(tmp_path, sim_server, ["agent-1"], portfolio_extra=notify)
    with Ledger(fleet.state_dir, url=pg_url) as ledger:
        ledger.register_agent("agent-1", fleet.user, max_positions=2, enabled=True)
    role, schema = f"notifier_{os.getpid()}", pg_url.rsplit("%3D", 1)[1]
    for sql in (
        f"CREATE ROLE {role} LOGIN",
        f"GRANT USAGE ON SCHEMA {schema} TO {role}",
        f"GRANT ALL ON ALL TABLES IN SCHEMA {schema} TO {role}",
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {schema} TO {role}",
    ):
        pg_server.execute(sql)
    proc = subprocess.Popen(
        fleet.command("notify"),
        env=fleet.env({URLS_ENV: receiver.url, LEDGER_URL_ENV: as_role(pg_url, role)}),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        assert ready and proc.stdout.readline().startswith("notify: watching")
        pg_server.execute(f"ALTER ROLE {role} NOLOGIN")  # the server refuses the notifier
        pg_server.execute(
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{role}'"
        )
        wait_for(lambda: receiver.messages, 30, "the direct outage alert")
        pg_server.execute(f"ALTER ROLE {role} LOGIN")
        wait_for(lambda: texts(receiver, "ledger reachable again"), 30, "the recovery alert")
    finally:
        assert end(proc) == 0
        pg_server.execute(f"DROP OWNED BY {role}")
        pg_server.execute(f"DROP ROLE {role}")
    assert len(receiver.messages) == 2
    outage, recovery = receiver.messages
    assert outage["title"] == "aster-agents: ledger unreachable"
    assert "unreachable or gone" in outage["message"] and role in outage["message"]
    assert "ledger reachable again after" in recovery["message"]
    assert set(receiver.by_id()) == {
        outage["message"].rsplit("id: ", 1)[1],
        recovery["message"].rsplit("id: ", 1)[1],
    }
    with Ledger(fleet.state_dir, url=pg_url) as ledger:
        assert [e.event for e in ledger.audit(100)].count("ledger_reachable") == 1


def as_role(url: str, role: str) -> str:
    """``url`` logging in as ``role`` (no password: the test server trusts local sockets)."""
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{role}@{rest.split('@', 1)[1]}"
