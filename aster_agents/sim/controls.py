"""Account controls of the simulated exchange, as functions over the :class:`Engine`.

Self-trade prevention mode (``GET/POST /fapi/v3/stpMode``; the matching itself is in the
engine), Multi-Assets mode (``multiAssetsMargin``), isolated position margin
(``positionMargin`` and its ``/history``) and the dead-man switch ``countdownCancelAll``.
Each takes ``(engine, user, params)`` and returns the JSON document the real exchange sends.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal

from aster_agents.sim.engine import (
    STP_MODES,
    ApiError,
    Engine,
    _bool,
    _choice,
    _dec,
    _int,
    _symbol,
    fmt,
    missing,
)

Params = Mapping[str, str]
_SUCCESS = {"code": 200, "msg": "success"}


def _required_symbol(p: Params) -> str:
    sym = _symbol(p)
    assert sym is not None
    return sym.symbol


def get_stp_mode(engine: Engine, user: str, _p: Params) -> dict[str, object]:
    with engine.lock:
        return {"stpMode": engine.account(user).stp_mode}


def set_stp_mode(engine: Engine, user: str, p: Params) -> dict[str, object]:
    """The account's mode for every symbol; an order's own ``stpMode`` overrides it."""
    mode = _choice(p, "stpMode", STP_MODES, "")
    with engine.lock:
        engine.account(user).stp_mode = mode
    return dict(_SUCCESS)


def get_multi_assets(engine: Engine, user: str, _p: Params) -> dict[str, object]:
    with engine.lock:
        return {"multiAssetsMargin": engine.account(user).multi_assets}


def set_multi_assets(engine: Engine, user: str, p: Params) -> dict[str, object]:
    """Recorded and reported; with USDT the only margin asset it changes nothing else."""
    if "multiAssetsMargin" not in p:
        raise missing("multiAssetsMargin")
    value = _bool(p, "multiAssetsMargin")
    with engine.lock:
        engine.account(user).multi_assets = value
    return dict(_SUCCESS)


def modify_position_margin(engine: Engine, user: str, p: Params) -> dict[str, object]:
    """POST positionMargin: ``type`` 1 adds ``amount`` to an isolated position, 2 removes it."""
    symbol = _required_symbol(p)
    amount = _dec(p, "amount", required=True)
    kind = _int(p, "type")
    assert amount is not None
    if kind not in (1, 2):
        raise ApiError(-1102, "Parameter 'type' must be 1 (add) or 2 (reduce).")
    if amount <= 0:
        raise ApiError(-4055, "Amount must be positive.")
    side = _choice(p, "positionSide", ("BOTH", "LONG", "SHORT"), "BOTH")
    with engine.lock:
        engine.tick_user(user)
        acct = engine.account(user)
        if not acct.isolated.get(symbol, False):
            raise ApiError(-4049, "Add margin only support for isolated position.")
        pos = acct.positions.get((symbol, side))
        if pos is None or not pos.amount:
            raise ApiError(-4054, "Cannot add position margin: position is 0.")
        if kind == 1 and amount > engine.available(acct):
            raise ApiError(-4050, "Cross balance insufficient.")
        if kind == 2 and amount > pos.added_margin:
            raise ApiError(-4051, "Isolated balance insufficient.")
        pos.added_margin += amount if kind == 1 else -amount
        acct.margin_changes.append(_change(symbol, kind, amount, side, engine.market.now_ms()))
    return {
        "amount": float(amount),
        "code": 200,
        "msg": "Successfully modify position margin.",
        "type": kind,
    }


def _change(symbol: str, kind: int, amount: Decimal, side: str, now: int) -> dict[str, object]:
    return {
        "symbol": symbol,
        "type": kind,
        "deltaType": "USER_ADJUST",
        "amount": fmt(amount),
        "asset": "USDT",
        "time": now,
        "positionSide": side,
    }


def position_margin_history(engine: Engine, user: str, p: Params) -> list[dict[str, object]]:
    """GET positionMargin/history: the newest ``limit`` changes (default 500), oldest first."""
    symbol = _required_symbol(p)
    kind = _int(p, "type")
    start, end = _int(p, "startTime"), _int(p, "endTime")
    limit = min(_int(p, "limit", 500) or 500, 1000)
    with engine.lock:
        rows = [
            r
            for r in engine.account(user).margin_changes
            if r["symbol"] == symbol
            and (kind is None or r["type"] == kind)
            and (start is None or int(str(r["time"])) >= start)
            and (end is None or int(str(r["time"])) <= end)
        ]
    return rows[-limit:]


def countdown_cancel_all(engine: Engine, user: str, p: Params) -> dict[str, object]:
    """Cancel every open order of ``symbol`` unless renewed within ``countdownTime`` ms (0: off)."""
    symbol = _required_symbol(p)
    ms = _int(p, "countdownTime")
    if ms is None:
        raise missing("countdownTime")
    if ms < 0:
        raise ApiError(-1130, "Data sent for parameter 'countdownTime' is not valid.")
    with engine.lock:
        acct = engine.account(user)
        if ms:
            acct.countdowns[symbol] = engine.wall() + ms / 1000
        else:
            acct.countdowns.pop(symbol, None)
    return {"symbol": symbol, "countdownTime": str(ms)}
