"""supervisord integration: render ``supervisord.conf`` and talk to a running supervisord.

``render`` is pure over the fleet config: the same ``agents.d`` gives the same text, every path
is written relative to the config file with ``%(here)s`` and no secret is ever written (agents
read their keys from the environment supervisord was started with). ``Supervisor`` starts
``supervisord`` from the interpreter's own environment and speaks XML-RPC over its unix socket,
which lives in the state dir with mode 0700; there is no inet server.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import stat
import subprocess
import sys
import time
import xmlrpc.client
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from aster_agents.config.schema import FleetConfig
from aster_agents.errors import AsterAgentsError, ConfigError
from aster_agents.fleet.rpc import supervisor_rpc
from aster_agents.fsutil import PRIVATE_UMASK, make_private_dir, write_private_file
from aster_agents.ledger.liveness import HOST_ENV, host_name, pid_alive

GROUP: Final = "aster-agents"
CONF_NAME: Final = "supervisord.conf"
SOCKET_NAME: Final = "supervisor.sock"
PID_NAME: Final = "supervisord.pid"
SOCKET_PATH_MAX: Final = 100  # sun_path is 108 bytes on Linux, 104 on macOS; keep a margin
STOP_WAIT_SECONDS: Final = 20  # the agent's own shutdown takes at most ~10 s
START_SECONDS: Final = 5  # an exit sooner than this is a failed start (retried with backoff)
# exits a restart cannot fix: clean stop, bad config or key, already running, credentials refused
EXPECTED_EXITS: Final = (0, 2, 3, 4)
DEFAULT_BIN: Final = "%(here)s/.venv/bin/aster-agent"
LOG_MAXBYTES: Final = "10MB"
LOG_BACKUPS: Final = 5
FAULT_ALREADY_STARTED: Final = 60  # supervisor.xmlrpc.Faults
FAULT_NOT_RUNNING: Final = 70
METRICS_PROGRAM: Final = "aster_metrics"
NOTIFY_PROGRAM: Final = "aster_notify"
RPC_TIMEOUT_S: Final = 30.0  # shutdown answers only after it has begun stopping the agents


class SupervisorNotRunning(AsterAgentsError):
    """No supervisord answers on the state dir's socket (exit 1)."""


# ---------------------------------------------------------------------- paths


def conf_path(state_dir: Path) -> Path:
    """Where ``up`` writes the config it starts supervisord with."""
    return state_dir / CONF_NAME


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def pid_path(state_dir: Path) -> Path:
    return state_dir / PID_NAME


def program_name(agent_id: str) -> str:
    """The name supervisorctl uses for an agent: ``aster-agents:<id>``."""
    return f"{GROUP}:{agent_id}"


def _here(target: Path, base: Path) -> str:
    rel = os.path.relpath(target.resolve(), base.resolve())
    return "%(here)s" if rel == "." else f"%(here)s/{rel}"


def check_socket_path(path: Path) -> None:
    """ConfigError when the unix socket path is too long for the OS."""
    length = len(os.fsencode(path.resolve()))
    if length > SOCKET_PATH_MAX:
        raise ConfigError(
            f"{path}: the supervisord socket path is {length} bytes, over the unix-socket limit "
            f"of {SOCKET_PATH_MAX}; use a shorter --state-dir (e.g. under /tmp)"
        )


# ---------------------------------------------------------------------- rendering


def render(
    fleet: FleetConfig,
    output_path: str | Path,
    *,
    aster_agent_bin: str | None = None,
    state_dir: str | Path | None = None,
    host: str | None = None,
) -> str:
    """The text of ``supervisord.conf`` for ``fleet``, to be written at ``output_path``.

    Only the agents of one host are rendered: those with no ``host:`` key or with
    ``host: <host>``; ``host`` defaults to this host's name (``$ASTER_AGENTS_HOST``, else
    the system's). A ``host`` given explicitly is also set as each agent's
    ``ASTER_AGENTS_HOST``, so the ledger records the same name the file was rendered for.

    ``state_dir`` defaults to ``_portfolio.yaml``'s (not ``$ASTER_AGENTS_STATE``) so the
    checked-in file does not depend on the shell it was rendered from. ``aster_agent_bin``
    defaults to ``%(here)s/.venv/bin/aster-agent``, the Makefile's venv.
    """
    base = Path(output_path).resolve().parent
    state = (
        fleet.resolve_path(str(state_dir))
        if state_dir
        else fleet.resolve_path(fleet.portfolio.state_dir)
    )
    check_socket_path(socket_path(state))
    s = _here(state, base)
    sections = [_header(fleet), _core_sections(s)]
    agents = fleet.agents_on(host or host_name())
    if agents:
        sections.append(f"[group:{GROUP}]\nprograms={','.join(a.id for a in agents)}\n")
    command = (
        f"{aster_agent_bin or DEFAULT_BIN} --config-dir {_here(fleet.config_dir, base)} "
        f"--state-dir {s} run"
    )
    sections.extend(_program(a.id, command, _here(fleet.root, base), s, host) for a in agents)
    sections.extend(_ops_programs(fleet, command.removesuffix(" run"), _here(fleet.root, base), s))
    return "\n".join(sections)


def _ops_programs(fleet: FleetConfig, base_command: str, directory: str, s: str) -> list[str]:
    """The exporter and the notifier when ``_portfolio.yaml`` asks for them (outside the group).

    Their names hold an underscore, which agent ids cannot, so they never clash with an agent.
    """
    out = []
    m = fleet.portfolio.metrics
    if m.enabled:
        remote = " --allow-remote" if m.allow_remote else ""
        command = f"{base_command} metrics --bind {m.bind} --port {m.port}{remote}"
        out.append(_ops_program(METRICS_PROGRAM, command, directory, s))
    if fleet.portfolio.notify is not None:
        out.append(_ops_program(NOTIFY_PROGRAM, f"{base_command} notify", directory, s))
    return out


def _ops_program(name: str, command: str, directory: str, s: str) -> str:
    return (
        f"[program:{name}]\n"
        f"command={command}\n"
        'environment=PYTHONUNBUFFERED="1"\n'
        f"directory={directory}\n"
        "autostart=true\n"
        "autorestart=true\n"
        "startsecs=2\n"
        "startretries=1000\n"
        "stopsignal=TERM\n"
        "stopwaitsecs=10\n"
        f"stdout_logfile={s}/logs/{name}.out.log\n"
        f"stdout_logfile_maxbytes={LOG_MAXBYTES}\n"
        f"stdout_logfile_backups={LOG_BACKUPS}\n"
        f"stderr_logfile={s}/logs/{name}.err.log\n"
        f"stderr_logfile_maxbytes={LOG_MAXBYTES}\n"
        f"stderr_logfile_backups={LOG_BACKUPS}\n"
    )


def _header(fleet: FleetConfig) -> str:
    return (
        f"; Generated by `aster-agent supervisor render` from {fleet.config_dir.name}/; "
        "do not edit.\n"
        "; No secrets here: agents read their keys (exchange.signer_key_env) from the\n"
        "; environment supervisord is started with; `aster-agent up` loads them from an env\n"
        "; file (mode 0600). The state and log directories must exist before supervisord\n"
        "; starts (`aster-agent up` creates them).\n"
    )


def _core_sections(s: str) -> str:
    return (
        "[unix_http_server]\n"
        f"file={s}/{SOCKET_NAME}\n"
        "chmod=0700\n"
        "\n"
        "[supervisord]\n"
        f"logfile={s}/logs/supervisord.log\n"
        f"logfile_maxbytes={LOG_MAXBYTES}\n"
        f"logfile_backups={LOG_BACKUPS}\n"
        "loglevel=info\n"
        "umask=077\n"  # its logs and the agents' files are the fleet's trading history (`up`
        # also starts it with that umask: supervisord -n never applies this line)
        f"pidfile={s}/{PID_NAME}\n"
        f"childlogdir={s}/logs\n"
        "\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "\n"
        "[supervisorctl]\n"
        f"serverurl=unix://{s}/{SOCKET_NAME}\n"
    )


def _program(agent_id: str, command: str, directory: str, s: str, host: str | None) -> str:
    named = f',{HOST_ENV}="{host}"' if host else ""
    return (
        f"[program:{agent_id}]\n"
        f"command={command}\n"
        f'environment=AGENT_ID="{agent_id}",PYTHONUNBUFFERED="1"{named}\n'
        f"directory={directory}\n"
        "autostart=true\n"
        "autorestart=unexpected\n"
        f"exitcodes={','.join(str(c) for c in EXPECTED_EXITS)}\n"
        f"startsecs={START_SECONDS}\n"
        "startretries=1000\n"
        "stopsignal=TERM\n"
        f"stopwaitsecs={STOP_WAIT_SECONDS}\n"
        "stopasgroup=true\n"
        "killasgroup=true\n"
        "redirect_stderr=true\n"
        f"stdout_logfile={s}/logs/{agent_id}.log\n"
        f"stdout_logfile_maxbytes={LOG_MAXBYTES}\n"
        f"stdout_logfile_backups={LOG_BACKUPS}\n"
    )


def installed_bin() -> str:
    """The ``aster-agent`` script next to the running interpreter (its venv's)."""
    return str(Path(sys.executable).parent / "aster-agent")


def write_runtime_config(
    fleet: FleetConfig,
    state_dir: Path,
    *,
    aster_agent_bin: str | None = None,
    host: str | None = None,
) -> Path:
    """Render into ``<state_dir>/supervisord.conf`` (atomically) and create the log dir."""
    make_private_dir(state_dir / "logs")
    path = conf_path(state_dir)
    text = render(
        fleet,
        path,
        aster_agent_bin=aster_agent_bin or installed_bin(),
        state_dir=state_dir,
        host=host,
    )
    write_private_file(path, text.encode("utf-8"), replace=True)
    return path


# ---------------------------------------------------------------------- env file


@dataclass(frozen=True, slots=True)
class EnvFile:
    """Variables from an env file; ``warning`` is set when the file is readable by others."""

    path: Path
    values: Mapping[str, str]
    warning: str | None

    def __repr__(self) -> str:  # values are secrets
        return f"EnvFile({self.path}, {len(self.values)} variable(s))"


def load_env_file(path: Path) -> EnvFile:
    """``KEY=VALUE`` lines (``export`` prefix, quotes and ``#`` comments allowed)."""
    try:
        text = path.read_text(encoding="utf-8")
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the env file: {exc.strerror}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        name = name.strip()
        if not sep or not name.replace("_", "a").isalnum() or name[0].isdigit():
            raise ConfigError(f"{path}: line {number}: expected NAME=VALUE")
        values[name] = _unquote(value.strip())
    warning = None
    if mode & 0o077:
        warning = f"{path} is readable by group or others (mode {mode:04o}); run chmod 600 {path}"
    return EnvFile(path, values, warning)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value


# ---------------------------------------------------------------------- a running supervisord


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One program as supervisord reports it."""

    name: str
    group: str
    state: str  # RUNNING, STARTING, BACKOFF, STOPPED, EXITED, FATAL, ...
    pid: int | None
    description: str
    exitstatus: int
    start: int
    stop: int

    @property
    def agent_id(self) -> str:
        return self.name


def _process(info: Mapping[str, Any]) -> ProcessInfo:
    pid = int(info.get("pid") or 0)
    return ProcessInfo(
        str(info["name"]),
        str(info["group"]),
        str(info["statename"]),
        pid or None,
        str(info.get("description", "")),
        int(info.get("exitstatus", 0)),
        int(info.get("start", 0)),
        int(info.get("stop", 0)),
    )


class Supervisor:
    """A supervisord whose socket and config live in ``state_dir``."""

    def __init__(self, state_dir: Path, conf: Path | None = None) -> None:
        self.state_dir = state_dir
        self.conf = conf or conf_path(state_dir)
        self.socket = socket_path(state_dir)

    # -- XML-RPC

    def _call(self, method: str, *args: object, ok_faults: tuple[int, ...] = ()) -> Any:
        if not self.socket.exists():
            raise self._not_running()
        try:
            with supervisor_rpc(self.socket, RPC_TIMEOUT_S) as proxy:
                return getattr(proxy.supervisor, method)(*args)
        except xmlrpc.client.Fault as exc:
            if exc.faultCode in ok_faults:
                return None
            raise AsterAgentsError(
                f"supervisord ({self.socket}) refused {method}{args}: {exc.faultString}"
            ) from None
        except (OSError, xmlrpc.client.ProtocolError, http.client.HTTPException):
            raise self._not_running() from None

    def _not_running(self) -> SupervisorNotRunning:
        return SupervisorNotRunning(
            f"supervisord is not running (no socket at {self.socket}); "
            "start it with `aster-agent up`"
        )

    def is_running(self) -> bool:
        try:
            return bool(self._call("getState")["statename"] == "RUNNING")
        except SupervisorNotRunning:
            return False

    def pid(self) -> int:
        return int(self._call("getPID"))

    def processes(self) -> list[ProcessInfo]:
        return [_process(p) for p in self._call("getAllProcessInfo")]

    def process(self, agent_id: str) -> ProcessInfo:
        for info in self.processes():
            if info.name == agent_id:
                return info
        known = ", ".join(p.name for p in self.processes()) or "none"
        raise ConfigError(f"unknown agent {agent_id!r} (known: {known})")

    def restart(self, agent_ids: Sequence[str] | None = None) -> list[str]:
        """Stop then start the named agents (all when None); returns their names."""
        names = list(agent_ids) if agent_ids else [p.name for p in self.processes()]
        for agent_id in names:
            info = self.process(agent_id)
            full = f"{info.group}:{info.name}"  # the exporter and notifier are their own group
            if info.state in ("RUNNING", "STARTING", "BACKOFF"):
                self._call("stopProcess", full, True, ok_faults=(FAULT_NOT_RUNNING,))
            self._call("startProcess", full, False, ok_faults=(FAULT_ALREADY_STARTED,))
        return names

    # -- start and stop

    def refuse_if_running(self) -> None:
        if self.is_running():
            raise AsterAgentsError(
                f"supervisord is already running for {self.state_dir} (pid {self.pid()}); "
                "use `aster-agent restart` or `aster-agent down`"
            )
        self._clear_stale_socket()

    def start(self, env: Mapping[str, str], timeout: float = 20.0) -> int:
        """Start supervisord as a daemon and wait until it answers; returns its pid."""
        self.refuse_if_running()
        result = subprocess.run(
            [supervisord_bin(), "-c", str(self.conf)],
            env=dict(env),
            umask=PRIVATE_UMASK,  # it opens its log before it daemonizes and applies `umask=`
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            detail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no output"]
            raise AsterAgentsError(
                f"supervisord -c {self.conf} failed (exit {result.returncode}): {detail[0]}"
            )
        self.wait_ready(None, timeout)
        return self.pid()

    def spawn(self, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Run ``supervisord -n`` as a child in its own session (returns at once)."""
        self.refuse_if_running()
        cmd = [supervisord_bin(), "-n", "-c", str(self.conf)]
        return subprocess.Popen(
            cmd,
            env=dict(env),
            start_new_session=True,
            umask=PRIVATE_UMASK,  # `umask=` in the conf only applies when it daemonizes
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def foreground_argv(self) -> list[str]:
        """The command line ``up --foreground`` replaces itself with."""
        self.refuse_if_running()
        return [supervisord_bin(), "-n", "-c", str(self.conf)]

    def _clear_stale_socket(self) -> None:
        if self.socket.exists() or self.socket.is_symlink():
            self.socket.unlink()

    def wait_ready(self, proc: subprocess.Popen[bytes] | None, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc is not None and proc.poll() is not None:
                log = self.state_dir / "logs" / "supervisord.log"
                raise AsterAgentsError(
                    f"supervisord exited with code {proc.returncode} during start-up; see {log}"
                )
            if self.is_running():
                return
            time.sleep(0.05)
        raise AsterAgentsError(f"supervisord did not answer on {self.socket} within {timeout:.0f}s")

    def shutdown(self, timeout: float = 60.0) -> int:
        """Ask supervisord to stop every agent and exit; wait until it and they are gone.

        Should supervisord not be gone after ``timeout``, it and any agent left are SIGKILLed
        (each agent is its own process group leader, so ``killpg`` takes its children too).
        """
        pid = self.pid()
        agents = [p.pid for p in self.processes() if p.pid]
        with contextlib.suppress(SupervisorNotRunning):  # it may close the socket first
            self._call("shutdown")
        if not wait_pid_gone(pid, timeout):
            _kill(pid, group=False)
        for agent_pid in agents:
            if not wait_pid_gone(agent_pid, 5.0):
                _kill(agent_pid, group=True)
        return pid


def _kill(pid: int, *, group: bool) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, signal.SIGKILL)
        else:
            os.kill(pid, signal.SIGKILL)
    wait_pid_gone(pid, 5.0)


def supervisord_bin() -> str:
    return _sibling("supervisord")


def supervisorctl_bin() -> str:
    return _sibling("supervisorctl")


def _sibling(name: str) -> str:
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise AsterAgentsError(
            f"{path} not found: supervisor is not installed in this environment; "
            "run `pip install -e .` (it is a dependency)"
        )
    return str(path)


def wait_pid_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def agent_log(state_dir: Path, agent_id: str) -> Path:
    """The one log of an agent, however it was started: ``<state_dir>/logs/<id>.log``.

    In a terminal the agent writes it itself (and rotates it); under supervisord the agent
    writes only to stderr and supervisord captures stdout and stderr into this same file, so
    a crash before logging is set up is in it too.
    """
    return state_dir / "logs" / f"{agent_id}.log"


def tail(path: Path, lines: int = 50) -> list[str]:
    """The last ``lines`` lines of a log file (empty when it does not exist)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 256 * lines))
            data = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return []
    return data.splitlines()[-lines:]
