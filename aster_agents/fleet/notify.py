"""One notifier for the whole fleet (``aster-agent notify``): ledger events -> Apprise.

The loop reads new ``audit`` rows after the ledger cursor, turns the ones that matter into
alerts (``alert_for``), waits ``group_seconds`` after the first alert so that a burst (ten
agents failing together) leaves as one grouped message, respects ``max_per_hour``, writes
the message whole to the ledger (``sending``, synced), sends it through every Apprise URL,
and only then records it as delivered and moves the cursor in one transaction. It also
watches supervisord and the heartbeats (``collect_status``) and records FATAL, BACKOFF
(crash loop) and STALE transitions as ``process_state`` audit rows, so they flow through
the same path. Once a day it sends a summary.

Delivery promise: every alert is delivered at least once. Exactly once is impossible at one
point: the notifier dying after the receiver accepted a message and before the commit that
records it. A restart then resends the message in flight unchanged (same events, same last
line ``id: aster-<first>-<last>``, the audit ids it covers), so a receiver that keeps the ids
it has seen drops the copy; the next events go in the next message. A delivery that fails
is retried with backoff, also unchanged; nothing is skipped. The daily summary carries
``id: aster-summary-<day>``.
The notifier never writes anything an agent waits for: its writes are short transactions
on its own tables and an occasional audit row.

Only this module imports apprise.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from aster_agents.errors import ConfigError, LedgerError
from aster_agents.logs import logger

if TYPE_CHECKING:
    from aster_agents.config.schema import FleetConfig, NotifyConfig
    from aster_agents.config.view import FleetView
    from aster_agents.ledger.notify import NotifyStore
    from aster_agents.ledger.rows import AuditEntry

WATCHED_PROCESS_STATES: Final = frozenset({"FATAL", "BACKOFF", "STALE"})
MAX_BACKOFF_S: Final = 300.0
TITLE: Final = "aster-agents"
LEDGER_ALERT_RETRY_S: Final = 60.0


class Outgoing(NamedTuple):
    """A composed message: what ``sending`` stores and a restart resends unchanged."""

    id: str
    first: int | None
    last: int | None
    events: int
    title: str
    body: str

    def dump(self) -> str:
        return json.dumps(self._asdict(), sort_keys=True)

    @classmethod
    def load(cls, text: str) -> Outgoing:
        d = json.loads(text)
        return cls(d["id"], d["first"], d["last"], d["events"], d["title"], d["body"])


def with_id(body: str, message_id: str) -> str:
    """The body with its id on the last line, where a receiver can dedup on it."""
    return f"{body}\nid: {message_id}"


class Alert(NamedTuple):
    """One thing worth telling an operator; ``key`` deduplicates repeats."""

    audit_id: int
    kind: str
    key: str
    text: str


def _detail(entry: AuditEntry) -> dict[str, Any]:
    try:
        value = json.loads(entry.detail)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _utc(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%H:%M:%S UTC")


def alert_for(entry: AuditEntry, cfg: NotifyConfig) -> Alert | None:
    """The alert an audit row raises, or None (most rows are routine)."""
    d, who = _detail(entry), entry.agent_id or "fleet"
    text: str | None = None
    if entry.event == "agent_state":
        state = d.get("state")
        verb = {"disabled": "DISABLED", "probation": "on probation", "active": "enabled"}
        text = f"{who} {verb.get(str(state), state)}: {d.get('reason', '')}".rstrip(": ")
    elif entry.event == "pause":
        reason = str(d.get("reason", ""))
        kind = "418 ban" if " 418 " in f" {reason} " or "banned" in reason else "429 pause"
        text = f"{kind}: every agent on the host paused until {_utc(float(d.get('until', 0)))}"
        text += f" ({reason})" if reason else ""
    elif entry.event == "reconcile":
        diffs = int(d.get("differences") or 0)
        if diffs >= cfg.reconcile_threshold:
            text = f"reconcile of account {d.get('user')} found {diffs} difference(s)"
    elif entry.event == "process_state":
        state = str(d.get("state"))
        text = {
            "FATAL": f"{who} FATAL in supervisord (gave up restarting)",
            "BACKOFF": f"{who} crash-looping (supervisord BACKOFF)",
            "STALE": f"{who} stale: no heartbeat for {d.get('age_s', '?')} s",
        }.get(state)
    elif entry.event in ("liquidation", "adl"):
        what = "liquidated" if entry.event == "liquidation" else "auto-deleveraged (ADL)"
        text = f"{who} {what} on {d.get('symbol', '?')}: qty {d.get('qty', '?')} at "
        text += f"{d.get('price', '?')}, realized P&L {d.get('realized_pnl', '?')}"
    elif entry.event == "position_closed" and d.get("reason"):  # closed without a fill
        text = f"{who} position on {d.get('symbol', '?')} written off: {d['reason']}"
    elif entry.event == "exchange_unreachable":
        since = _utc(float(d.get("since_ms", 0)) / 1000)
        text = f"exchange {d.get('url', '?')} unreachable for {float(d.get('down_s', 0)):.0f} s "
        text += f"(no answer since {since}; seen by {who})"
    elif entry.event == "exchange_reachable":
        text = f"exchange {d.get('url', '?')} reachable again after "
        text += f"{float(d.get('down_s', 0)):.0f} s without an answer"
    elif entry.event == "ledger_reachable":
        since = _utc(float(d.get("since_ms", 0)) / 1000)
        text = f"ledger reachable again after {float(d.get('down_s', 0)):.0f} s "
        text += f"(no answer since {since})"
    elif entry.event == "error":
        text = f"{who} error: {str(d.get('error', ''))[:200]}"
    if text is None:
        return None
    return Alert(entry.id, entry.event, f"{entry.event}:{who}:{text}", text)


@dataclass
class Rejections:
    """Counts order rejections per agent in a sliding window; alerts at the threshold."""

    threshold: int
    window_ms: float
    seen: dict[str, deque[int]] = field(default_factory=dict)

    def feed(self, entry: AuditEntry) -> Alert | None:
        if entry.event != "intent_rejected" or entry.agent_id is None:
            return None
        times = self.seen.setdefault(entry.agent_id, deque())
        times.append(entry.time_ms)
        while times and times[0] < entry.time_ms - self.window_ms:
            times.popleft()
        if len(times) < self.threshold:
            return None
        times.clear()
        minutes = self.window_ms / 60_000
        text = f"{entry.agent_id}: {self.threshold} orders rejected within {minutes:g} min"
        return Alert(entry.id, "rejections", f"rejections:{entry.agent_id}", text)


def compose(alerts: list[Alert]) -> tuple[str, str]:
    """(title, body) of one message; several alerts become one grouped message."""
    if len(alerts) == 1:
        return f"{TITLE}: {alerts[0].text}", alerts[0].text
    kinds: dict[str, list[Alert]] = {}
    for a in alerts:
        kinds.setdefault(a.kind, []).append(a)
    head = ", ".join(f"{len(v)} {k}" for k, v in sorted(kinds.items(), key=lambda kv: -len(kv[1])))
    lines = [a.text for a in alerts]
    return f"{TITLE}: {len(alerts)} events ({head})", "\n".join(lines)


class Delivery:
    """Apprise over the URLs of one environment variable; never logs a URL."""

    def __init__(self, urls: Iterable[str], env_name: str) -> None:
        import logging

        import apprise

        logging.getLogger("apprise").setLevel(logging.CRITICAL)  # its messages echo URLs
        self._apprise = apprise.Apprise()
        for n, url in enumerate(urls, start=1):
            if not self._apprise.add(url):
                raise ConfigError(
                    f"{env_name}: entry {n} is not an Apprise URL (see https://appriseit.com); "
                    "the value is not shown because it may hold a token"
                )

    def send(self, title: str, body: str) -> bool:
        return bool(self._apprise.notify(body=body, title=title))


def delivery_from_env(cfg: NotifyConfig, env: Mapping[str, str] | None = None) -> Delivery:
    env = os.environ if env is None else env
    raw = env.get(cfg.urls_env, "")
    urls = [u for u in raw.replace(",", " ").split() if u]
    if not urls:
        raise ConfigError(
            f"notify: environment variable {cfg.urls_env} is empty; set it to one or more "
            "Apprise URLs separated by spaces (e.g. tgram://BOT_TOKEN/CHAT_ID)"
        )
    return Delivery(urls, cfg.urls_env)


@dataclass
class Notifier:
    """The loop's state; ``step`` does one poll and is what tests and the CLI drive."""

    view: FleetView
    state_dir: Path
    cfg: NotifyConfig
    ledger: NotifyStore
    delivery: Delivery
    clock: Callable[[], float] = time.time
    cursor: int = 0
    last_read: int = 0
    pending: list[Alert] = field(default_factory=list)
    first_seen: float | None = None
    sent_times: deque[float] = field(default_factory=deque)
    recent: dict[str, float] = field(default_factory=dict)
    failures: int = 0
    retry_at: float = 0.0
    proc_states: dict[str, str] = field(default_factory=dict)
    rejections: Rejections | None = None
    outbox: Outgoing | None = None

    def __post_init__(self) -> None:
        self.cursor = self.last_read = self.ledger.cursor()
        in_flight = self.ledger.in_flight()
        if in_flight is not None:  # handed over, maybe delivered: resend it as it was
            self.outbox = Outgoing.load(in_flight)
            self.last_read = max(self.last_read, self.outbox.last or 0)
        self.rejections = Rejections(self.cfg.rejections, self.cfg.rejection_window_minutes * 6e4)
        last = self.ledger.last_event("process_state")
        self.proc_states = {a: str(_detail(e).get("state")) for a, e in last.items()}

    def step(self) -> None:
        self.watch_processes()
        self.read_events()
        self.maybe_send()
        self.maybe_summary()

    # ------------------------------------------------------------- inputs

    def watch_processes(self) -> None:
        from aster_agents.fleet.view import collect_status

        for agent in collect_status(self.view, self.state_dir).agents:
            state = agent.process.state if agent.enabled else "DISABLED"
            watched = state if state in WATCHED_PROCESS_STATES else "OK"
            if self.proc_states.get(agent.id, "OK") != watched:
                age = None if agent.last_tick_age_s is None else round(agent.last_tick_age_s)
                self.ledger.record(agent.id, "process_state", state=watched, age_s=age)
                self.proc_states[agent.id] = watched

    def read_events(self) -> None:
        entries = self.ledger.events_after(self.last_read)
        assert self.rejections is not None
        for entry in entries:
            alert = alert_for(entry, self.cfg) or self.rejections.feed(entry)
            if alert is not None and self._fresh(alert):
                self.pending.append(alert)
                if self.first_seen is None:
                    self.first_seen = self.clock()
        if entries:
            self.last_read = entries[-1].id
            if not self.pending and self.outbox is None:
                self.ledger.advance(self.last_read)
                self.cursor = self.last_read

    def _fresh(self, alert: Alert) -> bool:
        """False for a repeat of the same alert within ``repeat_minutes`` (heartbeat errors)."""
        now = self.clock()
        last = self.recent.get(alert.key)
        if last is not None and now - last < self.cfg.repeat_minutes * 60:
            return False
        self.recent[alert.key] = now
        return True

    # ------------------------------------------------------------- output

    def maybe_send(self) -> None:
        now = self.clock()
        if self.outbox is None and not self._compose(now):
            return
        if now >= self.retry_at:
            self._deliver(now)

    def _compose(self, now: float) -> bool:
        """Group the pending alerts into the outbox (stored before it leaves); False to wait."""
        if not self.pending or self.first_seen is None:
            return False
        if now - self.first_seen < self.cfg.group_seconds:
            return False
        while self.sent_times and self.sent_times[0] < now - 3600:
            self.sent_times.popleft()
        if len(self.sent_times) >= self.cfg.max_per_hour:
            return False  # rate limited: alerts keep piling into the next grouped message
        title, body = compose(self.pending)
        first, last = self.pending[0].audit_id, self.last_read
        message_id = f"aster-{first}-{last}"
        out = Outgoing(message_id, first, last, len(self.pending), title, with_id(body, message_id))
        self.ledger.sending(out.dump())
        self.outbox, self.pending, self.first_seen = out, [], None
        return True

    def _deliver(self, now: float) -> None:
        out = self.outbox
        assert out is not None
        if not self.delivery.send(out.title, out.body):
            self.failures += 1
            delay = min(MAX_BACKOFF_S, 2.0**self.failures)
            self.retry_at = now + delay
            logger.warning(
                "notify: delivery failed ({} in a row); retry in {:.0f} s", self.failures, delay
            )
            return
        self.ledger.sent(out.first, out.last, out.events, out.title)
        logger.info("notify: sent {!r} ({} event(s), {})", out.title, out.events, out.id)
        self.cursor = max(self.cursor, out.last or 0)
        self.sent_times.append(now)
        self.outbox, self.failures = None, 0
        if not self.pending and self.last_read > self.cursor:
            self.ledger.advance(self.last_read)  # rows read meanwhile that needed no message
            self.cursor = self.last_read

    def maybe_summary(self) -> None:
        if self.cfg.daily_summary_utc is None:
            return
        now = datetime.fromtimestamp(self.clock(), UTC)
        day = now.strftime("%Y-%m-%d")
        if now.strftime("%H:%M") < self.cfg.daily_summary_utc or self.ledger.summary_day() == day:
            return
        title, body, events = self.summary(now)
        if self.delivery.send(title, with_id(body, f"aster-summary-{day}")):
            self.ledger.summary_sent(day, events, title)
            logger.info("notify: sent the daily summary for {}", day)

    def summary(self, now: datetime) -> tuple[str, str, int]:
        from aster_agents.fleet.view import collect_portfolio

        report = collect_portfolio(self.view, self.state_dir)
        f = report.figures
        since = int(now.timestamp() * 1000) - 86_400_000
        events = sum(m.events for m in self.ledger.messages(since))
        lines = [
            f"equity {f.equity:.2f} USDT, P&L {f.pnl:+.2f}, return {f.ret:+.2%}, "
            f"drawdown {f.drawdown:.2%}",
            *(
                f"{s.id}: return {s.figures.ret:+.2%}, state {s.ledger_state or '-'}"
                for s in report.sleeves
            ),
            f"alerts in the last 24 h: {events}",
        ]
        return f"{TITLE}: daily summary {now:%Y-%m-%d}", "\n".join(lines), events


@dataclass
class LedgerWatch:
    """The one alert the ledger cannot carry: the ledger itself unreachable for ``after_s``.

    Sent straight through Apprise (id ``aster-ledger-<since ms>``) and not recorded, since
    nothing can be; the recovery is recorded as a ``ledger_reachable`` audit row once the
    ledger answers, and delivered like any other event. A notifier restarted during an
    outage starts counting again and may send the outage alert twice, under two ids.
    """

    delivery: Delivery
    after_s: float
    clock: Callable[[], float] = time.time
    down_since: float | None = None
    alerted: bool = False
    retry_at: float = 0.0

    def failed(self, exc: Exception) -> None:
        now = self.clock()
        if self.down_since is None:
            self.down_since = now
            logger.warning("notify: the ledger does not answer: {}", exc)
        since = self.down_since
        if self.alerted or now - since < self.after_s or now < self.retry_at:
            return
        body = f"the ledger has not answered for {now - since:.0f} s (since {_utc(since)}): "
        body += f"{exc}; agents open nothing until it answers"
        message_id = f"aster-ledger-{int(since * 1000)}"
        self.alerted = self.delivery.send(f"{TITLE}: ledger unreachable", with_id(body, message_id))
        self.retry_at = now + LEDGER_ALERT_RETRY_S  # the receiver down as well: not every poll

    def ok(self, ledger: NotifyStore) -> None:
        since = self.down_since
        if since is None:
            return
        if self.alerted:
            down_s = round(self.clock() - since, 1)
            ledger.record(None, "ledger_reachable", since_ms=int(since * 1000), down_s=down_s)
        logger.info("notify: the ledger answers again")
        self.down_since, self.alerted = None, False


def run(fleet: FleetConfig, state_dir: Path, stop: threading.Event) -> int:
    """The notifier process: poll until ``stop``; returns 0.

    Ledger errors never end it: they are counted by ``LedgerWatch``, which alerts directly
    once they last ``notify.unreachable_minutes``.
    """
    cfg = fleet.portfolio.notify
    if cfg is None:
        raise ConfigError(
            f"{fleet.config_dir / '_portfolio.yaml'}: notify: not configured; add a notify: "
            "section (README 'Monitoring and alerts')"
        )
    delivery = delivery_from_env(cfg)
    watch = LedgerWatch(delivery, cfg.unreachable_minutes * 60)
    opened = _open(fleet, state_dir, delivery, watch, stop)
    if opened is None:
        return 0
    store, notifier = opened
    with store:
        print(f"notify: watching {state_dir} from audit id {notifier.cursor}", flush=True)
        while not stop.is_set():
            try:
                notifier.step()
                watch.ok(store)
            except LedgerError as exc:
                watch.failed(exc)
            stop.wait(cfg.poll_seconds)
    return 0


def _open(
    fleet: FleetConfig,
    state_dir: Path,
    delivery: Delivery,
    watch: LedgerWatch,
    stop: threading.Event,
) -> tuple[NotifyStore, Notifier] | None:
    """The store and the notifier, tried again every poll while the ledger does not answer."""
    from aster_agents.config.view import load_view
    from aster_agents.ledger.notify import NotifyStore

    cfg = fleet.portfolio.notify
    assert cfg is not None
    while not stop.is_set():
        try:
            store = NotifyStore(state_dir, fleet.ledger_url)
        except LedgerError as exc:
            watch.failed(exc)
            stop.wait(cfg.poll_seconds)
            continue
        try:
            return store, Notifier(load_view(fleet.config_dir), state_dir, cfg, store, delivery)
        except LedgerError as exc:
            store.close()
            watch.failed(exc)
            stop.wait(cfg.poll_seconds)
    return None
