"""supervisord.conf rendering, the env file, and the fleet commands' errors (no supervisord)."""

from __future__ import annotations

import configparser
import json
import shutil
from pathlib import Path

import pytest

from aster_agents.cli.main import main
from aster_agents.config.schema import load_fleet
from aster_agents.errors import ConfigError
from aster_agents.fleet.supervisor import load_env_file, render
from aster_agents.signing import Signer, generate_private_key
from tests.kit.cli import run_cli

REPO = Path(__file__).resolve().parent.parent


def _parse(text: str) -> configparser.RawConfigParser:
    parser = configparser.RawConfigParser()
    parser.read_string(text)
    return parser


def _copy_agents(tmp_path: Path, disable: str | None = None) -> Path:
    config = tmp_path / "agents.d"
    shutil.copytree(REPO / "agents.d", config)
    if disable:
        path = config / f"{disable}.yaml"
        path.write_text(path.read_text().replace("enabled: true", "enabled: false"))
    return config


def test_checked_in_conf_equals_render() -> None:
    """The repo's supervisord.conf is exactly what render gives for the repo's agents.d."""
    expected = render(load_fleet(REPO / "agents.d"), REPO / "supervisord.conf")
    assert (REPO / "supervisord.conf").read_text(encoding="utf-8") == expected


def test_render_sections_and_options() -> None:
    """One program per agent in the group, TERM with a long wait, process groups, logs rotated."""
    fleet = load_fleet(REPO / "agents.d")
    conf = _parse(render(fleet, REPO / "supervisord.conf"))
    ids = [a.id for a in fleet.enabled_agents]
    assert conf.get("group:aster-agents", "programs") == ",".join(ids)
    assert "inet_http_server" not in conf.sections()
    assert conf.get("unix_http_server", "file") == "%(here)s/state/supervisor.sock"
    assert conf.get("unix_http_server", "chmod") == "0700"
    assert conf.get("supervisorctl", "serverurl") == "unix://%(here)s/state/supervisor.sock"
    for agent_id in ids:
        p = dict(conf.items(f"program:{agent_id}"))
        assert p["command"] == (
            "%(here)s/.venv/bin/aster-agent --config-dir %(here)s/agents.d "
            "--state-dir %(here)s/state run"
        )
        assert f'AGENT_ID="{agent_id}"' in p["environment"]
        assert (p["stopsignal"], p["stopasgroup"], p["killasgroup"]) == ("TERM", "true", "true")
        assert int(p["stopwaitsecs"]) > 10 and p["startsecs"] == "5"
        assert (p["autorestart"], p["exitcodes"]) == ("unexpected", "0,2,3,4")
        assert p["stdout_logfile"] == f"%(here)s/state/logs/{agent_id}.log"
        assert p["redirect_stderr"] == "true" and "stderr_logfile" not in p
        assert p["stdout_logfile_maxbytes"] and p["stdout_logfile_backups"]


def test_render_skips_disabled_agents(tmp_path: Path) -> None:
    """A disabled agent gets no program and is not in the group."""
    fleet = load_fleet(_copy_agents(tmp_path, disable="agent-7"))
    conf = _parse(render(fleet, tmp_path / "supervisord.conf"))
    assert "program:agent-7" not in conf.sections()
    assert "agent-7" not in conf.get("group:aster-agents", "programs").split(",")
    assert len([s for s in conf.sections() if s.startswith("program:")]) == 9


def test_render_writes_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keys present in the environment never reach the rendered file."""
    fleet = load_fleet(REPO / "agents.d")
    keys = {}
    for agent in fleet.agents:
        assert agent.exchange.signer_key_env is not None
        keys[agent.exchange.signer_key_env] = generate_private_key()
        monkeypatch.setenv(agent.exchange.signer_key_env, keys[agent.exchange.signer_key_env])
    text = render(fleet, tmp_path / "supervisord.conf")
    for key in keys.values():
        assert key.removeprefix("0x").lower() not in text.lower()
    assert "PRIVATE_KEY=" not in text


def test_render_paths_relative_to_output(tmp_path: Path) -> None:
    """Rendered into the state dir, agents.d is reached through %(here)s/.."""
    fleet = load_fleet(REPO / "agents.d")
    text = render(
        fleet,
        REPO / "state" / "supervisord.conf",
        aster_agent_bin="/x/aster-agent",
        state_dir=REPO / "state",
    )
    conf = _parse(text)
    assert conf.get("unix_http_server", "file") == "%(here)s/supervisor.sock"
    assert conf.get("program:agent-1", "command") == (
        "/x/aster-agent --config-dir %(here)s/../agents.d --state-dir %(here)s run"
    )


def test_render_refuses_a_socket_path_too_long(tmp_path: Path) -> None:
    """A state dir whose socket path exceeds the unix limit is a clear config error."""
    fleet = load_fleet(REPO / "agents.d")
    deep = tmp_path / ("d" * 120)
    with pytest.raises(ConfigError, match="shorter --state-dir"):
        render(fleet, tmp_path / "supervisord.conf", state_dir=deep)


def test_render_command_writes_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`supervisor render -o FILE` writes what render() returns."""
    config = _copy_agents(tmp_path)
    out_file = tmp_path / "supervisord.conf"
    code, _, err = run_cli(
        ["--config-dir", str(config), "supervisor", "render", "-o", str(out_file)], capsys
    )
    assert code == 0, err
    fleet = load_fleet(config)
    assert out_file.read_text() == render(fleet, out_file, state_dir=fleet.state_dir())


def test_env_file_parsing_and_permissions(tmp_path: Path) -> None:
    """KEY=VALUE lines load; a group/world-readable file warns; the repr shows no value."""
    key = generate_private_key()
    path = tmp_path / ".env"
    path.write_text(f"# keys\nexport AGENT_1_PRIVATE_KEY={key}\nOTHER='a b'\n\n")
    path.chmod(0o644)
    loaded = load_env_file(path)
    assert dict(loaded.values) == {"AGENT_1_PRIVATE_KEY": key, "OTHER": "a b"}
    assert loaded.warning is not None and "chmod 600" in loaded.warning
    assert key not in repr(loaded)
    path.chmod(0o600)
    assert load_env_file(path).warning is None


def test_env_file_bad_line(tmp_path: Path) -> None:
    """A line that is not NAME=VALUE names the file and line."""
    path = tmp_path / ".env"
    path.write_text("GOOD=1\nthis is not an assignment\n")
    with pytest.raises(ConfigError, match=r"\.env: line 2"):
        load_env_file(path)


@pytest.mark.parametrize("command", [["restart"], ["restart", "--id", "agent-1"]])
def test_commands_without_supervisord(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """restart with no supervisord running exits 1 and says how to start it (down: exit 0)."""
    state = tmp_path / "st"
    args = ["--config-dir", str(_copy_agents(tmp_path)), "--state-dir", str(state), *command]
    code, _, err = run_cli(args, capsys)
    assert code == 1
    assert f"supervisord is not running (no socket at {state}/supervisor.sock)" in err
    assert "aster-agent up" in err


def test_logs_unknown_agent(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """logs for an unknown id exits 2 listing the known agents."""
    args = ["--config-dir", str(_copy_agents(tmp_path)), "logs", "--id", "nope"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "no agent with id 'nope' (known: agent-1, " in err


def test_logs_prints_the_captured_output(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """logs --id shows the last lines of the agent's one log."""
    state = tmp_path / "st"
    (state / "logs").mkdir(parents=True)
    lines = [f"line {i}" for i in range(80)]
    (state / "logs" / "agent-3.log").write_text("\n".join(lines) + "\n")
    args = [
        "--config-dir",
        str(_copy_agents(tmp_path)),
        "--state-dir",
        str(state),
        "logs",
        "--id",
        "agent-3",
        "-n",
        "5",
    ]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert out.splitlines() == lines[-5:]


def test_up_refuses_missing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """up with keys missing exits 2 naming the env vars, and starts nothing."""
    state = tmp_path / "st"
    args = ["--config-dir", str(_copy_agents(tmp_path)), "--state-dir", str(state), "up"]
    code, _, err = run_cli(args, capsys)
    assert code == 2
    assert "AGENT_1_PRIVATE_KEY is not set" in err
    assert "agent-10.yaml: trading.params.api_key_env: environment variable AGENT_10_LLM" in err
    assert "nothing started" in err
    assert not (state / "supervisor.sock").exists()


def test_up_refuses_bad_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """up with an invalid agents.d exits 2 before touching the state dir."""
    config = _copy_agents(tmp_path)
    path = config / "agent-2.yaml"
    path.write_text(path.read_text().replace("leverage: ", "leverage: 999 #"))
    state = tmp_path / "st"
    code, _, err = run_cli(["--config-dir", str(config), "--state-dir", str(state), "up"], capsys)
    assert code == 2
    assert "agent-2.yaml: trading.leverage" in err
    assert not state.exists()


def test_up_reads_keys_from_env_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Keys from --env-file count (a wrong key is named as such, its value is not printed)."""
    config = _copy_agents(tmp_path)
    wrong = generate_private_key()
    env = tmp_path / "keys.env"
    env.write_text("".join(f"AGENT_{i}_PRIVATE_KEY={wrong}\n" for i in range(1, 11)))
    env.chmod(0o600)
    args = [
        "--config-dir",
        str(config),
        "--state-dir",
        str(tmp_path / "st"),
        "up",
        "--env-file",
        str(env),
    ]
    code, out, err = run_cli(args, capsys)
    assert code == 2
    assert f"belongs to {Signer(wrong).address}" in err
    assert wrong.removeprefix("0x") not in out + err
    assert json.dumps(wrong) not in err


def test_render_cli_output_does_not_depend_on_where_it_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`supervisor render -o ANYWHERE` writes the checked-in file; --here moves %(here)s."""

    monkeypatch.delenv("ASTER_AGENTS_STATE")

    out = tmp_path / "elsewhere.conf"
    with pytest.raises(SystemExit) as done:
        main(["--config-dir", str(REPO / "agents.d"), "supervisor", "render", "-o", str(out)])
    assert done.value.code == 0
    assert out.read_text() == (REPO / "supervisord.conf").read_text()
    assert "keep the file there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(
            [
                "--config-dir",
                str(REPO / "agents.d"),
                "supervisor",
                "render",
                "--here",
                str(tmp_path),
                "-o",
                str(out),
            ]
        )
    assert "%(here)s/../" in out.read_text()


def test_metrics_and_notify_programs_when_configured(tmp_path: Path) -> None:
    """metrics.enabled and notify: add two programs outside the agents' group, loopback bind."""
    config = _copy_agents(tmp_path)
    with (config / "_portfolio.yaml").open("a") as f:
        f.write("metrics:\n  enabled: true\n  port: 9500\nnotify:\n  daily_summary_utc: null\n")
    fleet = load_fleet(config)
    conf = _parse(render(fleet, tmp_path / "supervisord.conf"))
    metrics = conf.get("program:aster_metrics", "command")
    assert metrics.endswith("run") is False and " metrics --bind 127.0.0.1 --port 9500" in metrics
    assert conf.get("program:aster_notify", "command").endswith(" notify")
    assert "aster_metrics" not in conf.get("group:aster-agents", "programs")
    plain = _parse(render(load_fleet(REPO / "agents.d"), REPO / "supervisord.conf"))
    assert not [s for s in plain.sections() if s.startswith("program:aster_")]


def _hosted(tmp_path: Path) -> Path:
    """agent-1 pinned to host beta, agent-2 to alpha, the others on any host."""
    config = _copy_agents(tmp_path)
    for agent_id, host in (("agent-1", "beta"), ("agent-2", "alpha")):
        path = config / f"{agent_id}.yaml"
        path.write_text(path.read_text() + f"host: {host}\n")
    return config


def test_render_keeps_this_hosts_agents_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent with `host:` is rendered on that host only; one without it on every host."""
    fleet = load_fleet(_hosted(tmp_path))
    monkeypatch.setenv("ASTER_AGENTS_HOST", "alpha")
    here = _parse(render(fleet, tmp_path / "supervisord.conf"))
    beta = _parse(render(fleet, tmp_path / "supervisord.conf", host="beta"))
    everyone = [a.id for a in fleet.enabled_agents]
    assert "program:agent-1" not in here.sections() and "program:agent-2" in here.sections()
    assert beta.get("group:aster-agents", "programs") == ",".join(
        a for a in everyone if a != "agent-2"
    )
    assert 'ASTER_AGENTS_HOST="beta"' in beta.get("program:agent-1", "environment")
    assert "ASTER_AGENTS_HOST" not in here.get("program:agent-2", "environment")


def test_render_host_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`supervisor render --host NAME` renders that host's agents; a bad name exits 2."""
    config = _hosted(tmp_path)
    code, out, err = run_cli(
        ["--config-dir", str(config), "supervisor", "render", "--host", "beta"], capsys
    )
    assert code == 0, err
    assert "[program:agent-1]" in out and "[program:agent-2]" not in out
    code, _, err = run_cli(
        ["--config-dir", str(config), "supervisor", "render", "--host", "no spaces"], capsys
    )
    assert code == 2 and "--host" in err


def test_host_key_is_validated(tmp_path: Path) -> None:
    """`host:` must be a host name: the error names the file and the key."""
    config = _copy_agents(tmp_path)
    path = config / "agent-3.yaml"
    path.write_text(path.read_text() + "host: 'two words'\n")
    with pytest.raises(ConfigError) as info:
        load_fleet(config)
    problems = " ".join(info.value.problems)
    assert "agent-3.yaml" in problems and "host" in problems
