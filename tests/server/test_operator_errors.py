"""What an operator sees when something is wrong: the exact command, its one-line message and
its exit code, against real processes (a real etcd, real control planes, real sockets)."""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mission_control.server.cli import main
from mission_control.server.cli_args import build_parser
from mission_control.server.etcd_process import EtcdProcess, EtcdUnavailable, free_port

from tests.support.certs import Authority
from tests.support.etcd import etcdctl
from tests.support.procs import ROOT, Proc, as_at_a_terminal, control_plane

CLI = [sys.executable, "-m", "mission_control.server.cli"]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=60, cwd=ROOT, env={**os.environ, **(env or {})}
    )


def one_line(stderr: str) -> str:
    """The single line an operator gets; never a traceback."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def poll(condition, timeout: float = 30.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def plane(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> str:
    proc, address = control_plane(etcd_server.endpoint, prefix)
    spawned.append(proc)
    return address


@pytest.fixture
def listening() -> Iterator[int]:
    """A port some other program listens on."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield taken.getsockname()[1]


# -- defect 3: one-line errors, no tracebacks ----------------------------------------------


def test_port_in_use_is_one_line(listening: int, etcd_server: EtcdProcess) -> None:
    result = run("serve", "--listen", f"127.0.0.1:{listening}", "--etcd", etcd_server.endpoint)
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"mission-control: cannot listen on 127.0.0.1:{listening}: Address already in use "
        "(another mission-control? choose another with --listen HOST:PORT)"
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["serve", "--http", "nonsense"], "argument --http: 'nonsense' is not HOST:PORT"),
        (
            ["serve", "--http", "127.0.0.1:99999"],
            "argument --http: '127.0.0.1:99999': the port must be 0 to 65535",
        ),
        (
            ["serve", "--http", "::1:8080"],
            "argument --http: '::1:8080': an IPv6 address goes in brackets: [::1]:8080",
        ),
        (
            ["serve", "--listen", "[::1:50051"],
            "argument --listen: '[::1:50051': [::1 is not an IPv6 address in brackets",
        ),
        (["serve", "--listen", "localhost"], "argument --listen: 'localhost' is not HOST:PORT"),
        (
            ["serve", "--etcd", "http://127.0.0.1:23791"],
            "argument --etcd: 'http://127.0.0.1:23791': no http:// is wanted, "
            "give HOST:PORT: '127.0.0.1:23791'",
        ),
        (
            ["serve", "--advertise", "replica-1:0"],
            "argument --advertise: 'replica-1:0': the port must be 1 to 65535",
        ),
        (["demo", "--http", "127.0.0.1:http"], "argument --http: '127.0.0.1:http' is not HOST:PORT"),
    ],
)
def test_bad_address_refused_when_parsed(tmp_path: Path, args: list[str], problem: str) -> None:
    state = tmp_path / "state"
    extra = ["--state-dir", str(state)] if args[0] == "serve" else []
    result = run(*args, *extra)
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result.stderr) == (
        f"mission-control: {problem} (`mission-control {args[0]} --help` lists the options)"
    )
    assert not state.exists()  # refused before any etcd started


def test_dashboard_port_in_use_is_named(listening: int, tmp_path: Path) -> None:
    state = tmp_path / "state"
    # serve on a port of its own: the default one may be another program's on a shared machine
    serve = ["serve", "--listen", "127.0.0.1:0", "--state-dir", str(state)]
    for command in (serve, ["demo", "--duration", "1"]):
        result = run(*command, "--http", f"127.0.0.1:{listening}")
        assert result.returncode == 2 and result.stdout == ""
        assert one_line(result.stderr) == (
            f"mission-control: cannot serve the dashboard (--http) on 127.0.0.1:{listening}: "
            "Address already in use (another program? choose another with --http HOST:PORT)"
        )
    assert not state.exists()  # found before any etcd started


def test_invalid_tls_pem_is_named(tmp_path: Path, etcd_server: EtcdProcess) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    serve = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd_server.endpoint]
    result = run(*serve, "--tls-cert", str(garbage), "--tls-key", str(garbage))
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"mission-control: {garbage}: not a valid PEM certificate"), line
    authority = Authority(tmp_path / "ca")
    server, other = authority.issue("localhost", server=True), authority.issue("other", server=True)
    result = run(*serve, "--tls-cert", str(server.cert), "--tls-key", str(garbage))
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"mission-control: {garbage}: not a valid PEM private key")
    result = run(*serve, "--tls-cert", str(server.cert), "--tls-key", str(other.key))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"mission-control: {other.key}: not the private key of {server.cert}"
    result = run("health", "--tls-ca", str(garbage), "--server", "127.0.0.1:1")
    assert result.returncode == 2
    assert one_line(result.stderr).startswith(f"mission-control: {garbage}: not a valid PEM certificate")


def test_ctrl_c_while_etcd_starts_stops_it(tmp_path: Path) -> None:
    # An etcd that never becomes healthy holds `serve` in its start for as long as we like.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "etcd").write_text(f"#!/bin/sh\necho $$ > {tmp_path / 'etcd.pid'}\nexec sleep 120\n")
    (fake / "etcd").chmod(0o755)
    env = {**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"}
    args = [*CLI, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(tmp_path / "state")]
    proc = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert poll(lambda: (tmp_path / "etcd.pid").exists())
        proc.send_signal(signal.SIGINT)
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130
    assert one_line(err) == "mission-control: interrupted during startup; stopped"
    pid = int((tmp_path / "etcd.pid").read_text())
    assert poll(lambda: not Path(f"/proc/{pid}").exists() or "zombie" in _state(pid))


def test_ctrl_c_while_importing_is_one_line(tmp_path: Path) -> None:
    """The console command, interrupted while Python imports its modules (most of a second)."""
    importing = tmp_path / "importing"
    slow = tmp_path / "slow" / "grpc"  # found before the real grpc: an import that takes long
    slow.mkdir(parents=True)
    (slow / "__init__.py").write_text(
        f"import pathlib, time\npathlib.Path({str(importing)!r}).touch()\ntime.sleep(60)\n"
    )
    command = Path(sys.executable).parent / "mission-control"
    proc = subprocess.Popen(
        as_at_a_terminal([str(command), "serve", "--state-dir", str(tmp_path / "state")]),
        env={**os.environ, "PYTHONPATH": str(slow.parent)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert poll(importing.exists)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and out == ""
    assert one_line(err) == "mission-control: interrupted"


def test_ctrl_c_during_demo_stops_it_in_one_line(tmp_path: Path) -> None:
    # a terminal's Ctrl-C goes to its whole foreground process group
    proc = subprocess.Popen(
        as_at_a_terminal([*CLI, "demo", "--duration", "60"]),
        cwd=ROOT,
        env={**os.environ, "TMPDIR": str(tmp_path)},  # its folder, named in its parts' arguments
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # its parts all started: the scenario's clock runs
            if line.startswith("["):
                break
        os.killpg(proc.pid, signal.SIGINT)
        _out, err = proc.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130
    said = [x for x in err.splitlines() if " INFO " not in x]  # the control plane's own log
    assert said == ["mission-control: demo interrupted; its processes and etcd are stopped"], err
    # its parts and its etcd (in a session of its own) are gone, and their folder
    assert poll(lambda: _running(str(tmp_path)) == [] and not any(tmp_path.iterdir()))


def _running(text: str) -> list[str]:
    """Processes with ``text`` in their command line."""
    found = subprocess.run(["pgrep", "-f", text], capture_output=True, text=True)
    return found.stdout.split()


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().lower()
    except OSError:
        return "zombie"


def test_closed_pipe_is_quiet(plane: str) -> None:
    """`breakers list --json | head -5` once the reader has gone: no BrokenPipeError."""
    for name in ("p1", "p2", "p3"):
        assert (
            run("breakers", "force-open", "--reason", "test", "--create", name, "--server", plane).returncode
            == 0
        )
    read, write = os.pipe()
    os.close(read)  # the reader is gone before the first write: always a broken pipe
    try:
        result = subprocess.run(
            [*CLI, "breakers", "list", "--json", "--server", plane],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            cwd=ROOT,
        )
    finally:
        os.close(write)
    assert result.returncode == 141 and result.stderr == ""


def test_unreachable_etcd_said_once_and_not_serving_at_once(tmp_path: Path, spawned: list[Proc]) -> None:
    port = free_port()
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "-v", "serve", "--listen", "127.0.0.1:0", "--etcd", f"127.0.0.1:{port}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mission-control: serving on "), line
        address = line.split()[3]
        health = run("health", "--server", address)
        assert health.returncode == 5 and "control plane: NOT_SERVING" in health.stdout
        retries = "DEBUG mission_control.server.sync: store unavailable"
        assert poll(lambda: log.read_text().count(retries) >= 3)
        warnings = [x for x in log.read_text().splitlines() if " WARNING " in x]
        assert len(warnings) == 1, warnings  # said once, however often it is retried
        assert f"etcd 127.0.0.1:{port} unreachable (" in warnings[0]
        assert "serving NOT_SERVING from defaults until it answers" in warnings[0]
        etcd = EtcdProcess(tmp_path / "etcd", client_port=port, log_file=tmp_path / "etcd.log").start()
        try:
            assert poll(lambda: run("health", "--server", address).returncode == 0, timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            etcd.stop()
    finally:
        proc.kill()
        proc.wait()
    # -v shows grpc's own debug records (tracebacks of cancelled streams among them): only
    # what is logged at INFO and above is for the operator
    loud = [x for x in log.read_text().splitlines() if " ERROR " in x or " CRITICAL " in x]
    assert loud == []


# -- defect 4: exit codes and output ---------------------------------------------------------


def test_global_options_before_the_command(plane: str) -> None:
    assert run("--server", plane, "health").returncode == 0
    assert run("--server", plane, "--json", "breakers", "list").stdout.startswith("[")
    # given in both places, the one after the command wins
    assert run("--server", "127.0.0.1:1", "health", "--server", plane).returncode == 0
    wrong = run("--server", plane, "serve")
    assert (
        wrong.returncode == 2
        and "--server before 'serve' applies only to the operator commands" in wrong.stderr
    )


def test_missing_policy_exits_4(plane: str) -> None:
    result = run("policies", "get", "nosuch", "--server", plane)
    assert result.returncode == 4 and result.stdout == ""
    assert one_line(result.stderr) == (
        "mission-control: no policy named 'nosuch' (its calls use the defaults; "
        "`policies list` shows those stored)"
    )


def test_stats_json_keeps_zeros_as_numbers(plane: str) -> None:
    stats = json.loads(run("stats", "--json", "--server", plane).stdout)
    for key in (
        "total_errors",
        "calls_rejected",
        "outcomes_dropped",
        "connected_agents",
        "recovery_attempts",
    ):
        assert stats[key] == 0 and type(stats[key]) is int, key
    assert stats["errors_by_service"] == {} and stats["fleet_limits"] == []
    assert (
        run("breakers", "force-open", "--reason", "test", "--create", "s1", "--server", plane).returncode == 0
    )
    breaker = json.loads(run("breakers", "get", "s1", "--json", "--server", plane).stdout)
    assert breaker["failures"] == 0 and type(breaker["failures"]) is int


def test_empty_config_is_valid_and_says_so(tmp_path: Path) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("")
    result = run("config", "validate", str(empty))
    assert result.returncode == 0 and result.stdout == f"{empty}: valid (no services: defaults only)\n"


# -- what went wrong is said, not left blank ---------------------------------------------------


def test_write_while_etcd_is_paused_says_it_did_not_answer(tmp_path: Path, spawned: list[Proc]) -> None:
    etcd = EtcdProcess(tmp_path / "etcd", log_file=tmp_path / "etcd.log").start()
    try:
        proc, address = control_plane(etcd.endpoint, "/mc-paused")
        spawned.append(proc)
        assert (
            run(
                "breakers", "force-open", "--reason", "test", "--create", "before", "--server", address
            ).returncode
            == 0
        )
        assert etcd.pid is not None
        os.kill(etcd.pid, signal.SIGSTOP)
        try:
            result = run(
                "breakers", "force-open", "--reason", "test", "--create", "paused", "--server", address
            )
        finally:
            os.kill(etcd.pid, signal.SIGCONT)
        assert result.returncode == 5
        said = one_line(result.stderr)
        if said == REFUSED_UP_FRONT:
            # the plane saw etcd away before the write came (a command that took seconds to
            # start on a loaded machine): refused unsent, so it is never stored
            after = ("breakers", "force-open", "--reason", "test", "--create", "after", "--server", address)
            deadline = time.monotonic() + 90
            while run(*after).returncode != 0:  # until the plane sees etcd back
                assert time.monotonic() < deadline, "no write stored after etcd went on"
                time.sleep(0.5)
            keys = etcdctl(etcd.endpoint, "get", "--prefix", "--keys-only", "/mc-paused/breakers/").split()
            assert "/mc-paused/breakers/after" in keys and "/mc-paused/breakers/paused" not in keys, keys
        else:  # sent, maybe applied once etcd goes on: never "not stored"
            assert said == (
                "mission-control: outcome unknown: etcd: did not answer within 8s; it may have been stored:"
                " check with `mission-control audit --limit 5` before trying again"
            )
    finally:
        etcd.stop()


REFUSED_UP_FRONT = "mission-control: not stored: etcd is unreachable (health NOT_SERVING): nothing was sent"


def test_state_dir_that_is_a_file_is_named(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    result = run("serve", "--listen", "127.0.0.1:0", "--state-dir", str(afile))
    assert result.returncode == 2
    assert one_line(result.stderr) == f"mission-control: --state-dir {afile}: a file, not a folder"


def test_etcd_that_exits_at_start_says_why(tmp_path: Path) -> None:
    """A disk that is full: etcd logs why and exits; the last thing it said is the reason."""
    fake = tmp_path / "bin"
    fake.mkdir()
    fatal = {
        "level": "fatal",
        "ts": "2026-11-29T12:00:00.000Z",
        "caller": "etcdmain/etcd.go:204",
        "msg": "discovery failed",
        "error": "write state/etcd/member/wal/0.tmp: no space left on device",
    }
    started = '{"level":"info","msg":"starting etcd"}'
    (fake / "etcd").write_text(f"#!/bin/sh\necho '{started}' >&2\necho '{json.dumps(fatal)}' >&2\nexit 1\n")
    (fake / "etcd").chmod(0o755)
    state = tmp_path / "state"
    (state).mkdir()
    (state / "etcd.log").write_text('{"level":"fatal","msg":"a run before this one"}\n')
    result = run(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--state-dir",
        str(state),
        env={"PATH": f"{fake}:{os.environ['PATH']}"},
    )
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        "mission-control: etcd exited with code 1: discovery failed: "
        f"write state/etcd/member/wal/0.tmp: no space left on device (more in {state / 'etcd.log'})"
    )


def test_etcd_exit_reason_from_a_real_etcd(tmp_path: Path, listening: int) -> None:
    etcd = EtcdProcess(tmp_path / "etcd", peer_port=listening, log_file=tmp_path / "etcd.log")
    with pytest.raises(EtcdUnavailable) as failed:
        etcd.start()
    assert "exited with code 1: " in str(failed.value) and "address already in use" in str(failed.value)


# -- text from the server is shown as text ---------------------------------------------------

FORGED = "ok\n2026-11-29 12:00:00 UTC  llm_provider  CLOSED (forged line)\x1b[2J"


def test_reason_with_control_characters_is_refused(plane: str) -> None:
    result = run("breakers", "force-open", "--create", "inj", "--reason", FORGED, "--server", plane)
    assert result.returncode == 2 and result.stdout == ""
    assert one_line(result.stderr) == (
        "mission-control: invalid input: reason: must be one line of printable text (it holds \\n, \\x1b)"
    )
    assert run("breakers", "get", "inj", "--server", plane).returncode == 4  # nothing stored


def test_what_the_server_sends_is_printed_escaped(
    etcd_server: EtcdProcess, prefix: str, plane: str, spawned: list[Proc]
) -> None:
    # a reason stored before reasons were checked, or written to etcd by hand
    assert (
        run("breakers", "force-open", "--reason", "test", "--create", "inj", "--server", plane).returncode
        == 0
    )
    key = f"{prefix}/breakers/inj"
    record = json.loads(etcdctl(etcd_server.endpoint, "get", key, "--print-value-only"))
    etcdctl(etcd_server.endpoint, "put", key, json.dumps({**record, "reason": FORGED}))
    escaped = FORGED.replace("\n", "\\n").replace("\x1b", "\\x1b")
    assert poll(lambda: escaped in run("breakers", "get", "inj", "--server", plane).stdout)
    for command in (["get", "inj"], ["list"]):
        shown = run("breakers", *command, "--server", plane)
        lines = shown.stdout.splitlines()
        assert shown.returncode == 0 and len(lines) == 2 and "\x1b" not in shown.stdout, shown.stdout
        assert lines[1].startswith("inj ") and lines[1].endswith(escaped), lines[1]
    watch = Proc([*CLI, "breakers", "watch", "--server", plane])
    spawned.append(watch)
    first = watch.wait_for("20", timeout=60)  # the breakers as they are, each on one line
    assert first.endswith(f" UTC  inj  - -> FORCED_OPEN  {escaped}"), first


# -- the CLI explains itself -----------------------------------------------------------------


def _parsers() -> Iterator[tuple[list[str], argparse.ArgumentParser]]:
    """Every (command path, parser) of the command line."""
    todo = [([], build_parser())]
    while todo:
        path, parser = todo.pop()
        yield path, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo += [([*path, name], sub) for name, sub in action.choices.items()]


def test_every_action_and_option_has_a_sentence_in_help(capsys: pytest.CaptureFixture[str]) -> None:
    paths = []
    for path, parser in _parsers():
        paths.append(" ".join(path))
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0
        shown = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for choice in action._choices_actions:
                    assert len((choice.help or "").split()) >= 3, (path, choice.dest)
                    assert f"{choice.dest} {' '.join(choice.help.split())}" in shown, (path, choice.dest)
                continue
            words = (action.help or "").split()
            assert len(words) >= 3 and action.help != argparse.SUPPRESS, (path, action.dest)
            names = action.option_strings or [action.metavar or action.dest]
            assert all(name in shown for name in names), (path, names)
            assert " ".join(words) in shown, (path, action.dest)
    expected = {"", "serve", "demo", "config", "breakers", "policies", "stats", "health"}
    assert expected <= set(paths) and "breakers list" in paths and "policies get" in paths
    top = run("--help")
    assert top.returncode == 0 and "Exit codes: 0 done" in top.stdout


# -- defects 2 and 5: one serve per state folder; the embedded etcd keeps its address --------


def _serve_embedded(state: Path, spawned: list[Proc]) -> tuple[Proc, str]:
    proc = Proc([*CLI, "serve", "--listen", "127.0.0.1:0", "--state-dir", str(state)])
    spawned.append(proc)
    etcd = proc.wait_for("mission-control: embedded etcd at ", timeout=60).split()[4]
    proc.wait_for("mission-control: serving on ", timeout=60)
    return proc, etcd


def test_second_serve_on_a_state_folder_is_refused_at_once(tmp_path: Path, spawned: list[Proc]) -> None:
    state = tmp_path / "state"
    first, etcd = _serve_embedded(state, spawned)
    ports, log = (state / "etcd-ports.json").read_bytes(), (state / "etcd.log").stat().st_size
    second = run("serve", "--listen", "127.0.0.1:0", "--state-dir", str(state))
    assert second.returncode == 2 and second.stdout == ""
    assert (
        one_line(second.stderr)
        == f"mission-control: another mission-control (pid {first.popen.pid}) is using {state}"
    )
    # the running instance's files are untouched
    assert (state / "etcd-ports.json").read_bytes() == ports and (state / "etcd.log").stat().st_size == log
    status = run("status", "--state-dir", str(state))
    assert status.returncode == 0 and f"export ETCD={etcd}" in status.stdout
    assert f"mission-control (pid {first.popen.pid}) is using {state}, serving on 127.0.0.1:" in status.stdout
    # the exports it prints are what the CLI and etcdctl need, whatever ports serve took
    exports = dict(
        line.strip().removeprefix("export ").split("=", 1)
        for line in status.stdout.splitlines()
        if line.strip().startswith("export ")
    )
    assert exports == {"MISSION_CONTROL_SERVER": _address(first), "ETCD": etcd}, status.stdout
    assert run("health", env={"MISSION_CONTROL_SERVER": exports["MISSION_CONTROL_SERVER"]}).returncode == 0

    # killed outright, its etcd lives on holding the data: say so rather than time out
    first.kill(signal.SIGKILL)
    facts = json.loads((state / "lock").read_text())
    try:
        status = run("status", "--state-dir", str(state))
        assert status.returncode == 3 and status.stdout.splitlines() == [
            f"no mission-control is using {state}: the one that did (pid {first.popen.pid}) is gone",
            f"its embedded etcd (pid {facts['etcd_pid']}) still runs at {etcd} and holds the folder: "
            f"stop it with `kill {facts['etcd_pid']}` before the next serve",
        ]
        assert (
            json.loads(run("status", "--json", "--state-dir", str(state)).stdout)["orphan_etcd_pid"]
            == (facts["etcd_pid"])
        )
        orphan = run("serve", "--listen", "127.0.0.1:0", "--state-dir", str(state))
        assert orphan.returncode == 2
        assert one_line(orphan.stderr) == (
            f"mission-control: an etcd (pid {facts['etcd_pid']}) left by a mission-control that is gone "
            f"(pid {first.popen.pid}) still uses {state}: stop it (kill {facts['etcd_pid']}) and start again"
        )
    finally:
        os.kill(facts["etcd_pid"], signal.SIGTERM)
    assert poll(lambda: run("status", "--state-dir", str(state)).returncode == 3)


def test_embedded_etcd_keeps_its_address_across_restarts(tmp_path: Path, spawned: list[Proc]) -> None:
    state = tmp_path / "state"
    addresses = []
    for _ in range(3):
        proc, etcd = _serve_embedded(state, spawned)
        addresses.append(etcd)
        # a client connected when it stops leaves connections in TIME_WAIT on the port
        assert (
            run(
                "breakers", "force-open", "--reason", "test", "--create", "kept", "--server", _address(proc)
            ).returncode
            == 0
        )
        proc.stop()
        assert proc.popen.returncode == 0
    assert addresses == [addresses[0]] * 3
    status = run("status", "--state-dir", str(state))
    assert status.returncode == 3 and status.stdout.splitlines() == [
        f"no mission-control is using {state}",
        f"embedded etcd: {addresses[0]} (when next started, if that port is free)",
        f"  export ETCD={addresses[0]}",
    ]
    assert json.loads(run("status", "--json", "--state-dir", str(state)).stdout)["etcd"] == addresses[0]


def _address(proc: Proc) -> str:
    return proc.wait_for("mission-control: serving on ").split()[3]


# -- defect 1: etcd endpoints by DNS name ----------------------------------------------------


def _loopback_name() -> str:
    """A name of this machine (not `localhost`, which etcd3aio rewrites) resolving to 127.0.0.1."""
    name = socket.gethostname()
    if "127.0.0.1" not in {info[4][0] for info in socket.getaddrinfo(name, 0, socket.AF_INET)}:
        pytest.skip(f"the host name {name!r} does not resolve to 127.0.0.1")
    return name


def test_etcd_by_dns_name(etcd_server: EtcdProcess, prefix: str, spawned: list[Proc]) -> None:
    endpoint = f"{_loopback_name()}:{etcd_server.client_port}"
    proc, address = control_plane(endpoint, prefix)
    spawned.append(proc)
    assert f"(etcd {endpoint}," in proc.lines[-1]
    health = run("health", "--server", address)
    assert health.returncode == 0 and "control plane: SERVING (etcd reachable)" in health.stdout
    assert (
        run(
            "breakers", "force-open", "--reason", "test", "--create", "by-name", "--server", address
        ).returncode
        == 0
    )


def test_etcd_name_without_address_yet_serves_not_serving(tmp_path: Path) -> None:
    """In Kubernetes etcd's DNS records appear only once its pods run: not a reason to exit."""
    log = tmp_path / "stderr.log"
    with log.open("w") as err:
        proc = subprocess.Popen(
            [*CLI, "-v", "serve", "--listen", "127.0.0.1:0", "--etcd", "etcd-0.etcd.invalid:2379"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("mission-control: serving on "), (line, log.read_text())
        health = run("health", "--server", line.split()[3])
        assert health.returncode == 5 and "control plane: NOT_SERVING" in health.stdout
        again = "DEBUG mission_control.server.etcd: re-resolving etcd endpoints failed"
        assert poll(lambda: log.read_text().count(again) >= 2)  # it keeps resolving
        warnings = [x for x in log.read_text().splitlines() if " WARNING " in x]
        assert len(warnings) == 1, warnings  # said once
        said = warnings[0].split(" WARNING mission_control.server: ")[1]
        assert said.startswith("etcd etcd-0.etcd.invalid:2379 unreachable (no address (etcd-0.etcd.invalid: ")
        assert said.endswith(
            "); resolving it again until it has one): serving NOT_SERVING from defaults until it answers"
        ), said
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("instance", ["rep/a", "rep a", "-rep", "r" * 129])
def test_an_instance_id_the_roster_would_refuse_is_refused_at_start(instance: str) -> None:
    result = run("serve", "--listen", "127.0.0.1:0", f"--instance-id={instance}")
    assert result.returncode == 2
    assert one_line(result.stderr) == (
        f"mission-control: --instance-id {instance!r} must be 1-128 characters of letters, digits, "
        "'_', '.' or '-' (it names this replica's keys)"
    )


@pytest.mark.parametrize("age", ["99999999999h", "200000000h", "99999999999999999999d"])
def test_an_age_before_the_year_one_is_refused_in_one_line(age: str) -> None:
    result = run("audit", "--since", age, "--server", "127.0.0.1:1")
    assert result.returncode == 2, result.stderr
    assert "too long ago" in result.stderr and "Traceback" not in result.stderr


def test_an_admin_tokens_file_listing_a_token_or_a_name_twice_is_one_line(
    tmp_path: Path, etcd_server: EtcdProcess
) -> None:
    serve = ["serve", "--listen", "127.0.0.1:0", "--etcd", etcd_server.endpoint]
    for text, problem in (
        ("alice same-1\nbob same-1\n", "a token is listed more than once"),
        ("alice token-1\nalice token-2\n", "a name is given to more than one token"),
    ):
        tokens = tmp_path / "admins.txt"
        tokens.write_text(text)
        result = run(*serve, "--admin-tokens-file", str(tokens))
        assert result.returncode == 2
        assert problem in one_line(result.stderr)


def test_an_argument_that_is_not_utf8_is_one_line() -> None:
    result = subprocess.run(
        [*CLI, "breakers", "force-open", "storage_backend", "--reason", b"bad\xffbyte"],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "not UTF-8" in one_line(result.stderr)
