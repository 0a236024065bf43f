"""Ctrl-C of a parallel test run (pytest-xdist, two processes, as ``make test`` runs) leaves
no etcd of it running: a real pytest run of two files that each hold an etcd (the session's
and a test's own), interrupted as a terminal does, with SIGINT to its whole process group."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.leftovers import etcds_under
from tests.support.polling import poll
from tests.support.procs import ROOT, as_at_a_terminal

HOLDERS = ROOT / "tests" / "support" / "interrupted"


def parallel_run(basetemp: Path) -> subprocess.Popen[str]:
    """``pytest -n 2`` of the two holders, in a process group of its own (a terminal's
    foreground job) and with Ctrl-C's default handling."""
    argv = [sys.executable, "-m", "pytest", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"]
    argv += [f"--basetemp={basetemp}", str(HOLDERS / "waits_on_session_etcd.py")]
    argv.append(str(HOLDERS / "waits_on_own_etcd.py"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's
    return subprocess.Popen(
        as_at_a_terminal(argv),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        process_group=0,
    )


@pytest.mark.timeout(600)
def test_ctrl_c_of_a_parallel_run_leaves_no_etcd_running(tmp_path: Path) -> None:
    basetemp = tmp_path / "run"
    run = parallel_run(basetemp)
    try:
        # Start-up is three Python processes importing pytest and the project, then two etcds:
        # 72 s at load ~20 on two cores, past 120 s at load ~30. Only a bound against a hang.
        poll(lambda: len(etcds_under(basetemp)) >= 2 or run.poll() is not None, timeout=300)
        started = etcds_under(basetemp)
        assert len(started) == 2 and run.poll() is None, (started, run.poll())
        os.killpg(run.pid, signal.SIGINT)
        out, _ = run.communicate(timeout=180)  # xdist waits for its workers to end
        assert run.returncode != 0, out
        try:
            poll(lambda: not etcds_under(basetemp), timeout=30)
        except AssertionError:
            raise AssertionError(
                f"etcd {sorted(etcds_under(basetemp))} still running; the run said:\n{out}"
            ) from None
    finally:
        for pid in etcds_under(basetemp):  # a failure here must not leave them behind either
            os.kill(pid, signal.SIGKILL)
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(timeout=30)
