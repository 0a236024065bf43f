"""The control plane on an etcd that requires TLS client certificates and a password."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from mission_control.resilience.v1 import control_plane_pb2 as pb
from mission_control.resilience.v1 import control_plane_pb2_grpc as pb_grpc
from mission_control.resilience.v1 import policy_pb2
from mission_control.server.etcd_process import EtcdProcess

from tests.support.certs import Authority
from tests.support.procs import Proc, control_plane

PASSWORD = "etcd-pass-5e6f7a"


def test_tls_client_certificates_and_password(
    tmp_path: Path, spawned: list[Proc], capfd: pytest.CaptureFixture[str]
) -> None:
    ca = Authority(tmp_path / "pki", "etcd-ca")
    server, root, mc = ca.issue("etcd", server=True), ca.issue("root"), ca.issue("mission-control")
    etcd = EtcdProcess(
        tmp_path / "etcd", log_file=tmp_path / "etcd.log", tls=(server.cert, server.key, ca.path)
    )
    etcd.start()
    try:
        base = [
            shutil.which("etcdctl") or "etcdctl",
            f"--endpoints=https://{etcd.endpoint}",
            f"--cacert={ca.path}",
            f"--cert={root.cert}",
            f"--key={root.key}",
        ]

        def etcdctl(*args: str, user: str | None = None) -> str:
            command = [*base, *([f"--user={user}"] if user else []), *args]
            result = subprocess.run(
                command, capture_output=True, text=True, timeout=30, env={"ETCDCTL_API": "3"}
            )
            assert result.returncode == 0, result.stderr
            return result.stdout

        etcdctl("user", "add", "root", "--new-user-password=root-pass")
        etcdctl("user", "add", "mc", f"--new-user-password={PASSWORD}")
        etcdctl("user", "grant-role", "mc", "root")
        etcdctl("auth", "enable")
        password_file = tmp_path / "etcd-password"
        password_file.write_text(PASSWORD + "\n")
        flags = [
            "--etcd-ca",
            str(ca.path),
            "--etcd-cert",
            str(mc.cert),
            "--etcd-key",
            str(mc.key),
            "--etcd-user",
            "mc",
        ]
        plane, address = control_plane(
            etcd.endpoint, "/secure", *flags, "--etcd-password-file", str(password_file)
        )
        spawned.append(plane)
        stub = pb_grpc.ControlPlaneServiceStub(grpc.insecure_channel(address))
        policy = policy_pb2.ServicePolicy(service="llm_provider", timeout_secs=9)
        assert stub.PutPolicy(pb.PutPolicyRequest(policy=policy), timeout=10).revision > 0
        stored = etcdctl("get", "/secure/policies/llm_provider", "--print-value-only", user="root:root-pass")
        assert json.loads(stored)["timeout_secs"] == 9
        # a wrong password: a clear one-line error, a non-zero exit, and no password echoed
        password_file.write_text("wrong-" + PASSWORD)
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "mission_control.server.cli",
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--etcd",
                etcd.endpoint,
                *flags,
                "--etcd-password-file",
                str(password_file),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        assert "authentication failed" in result.stderr and "Traceback" not in result.stderr
        out, err = capfd.readouterr()
        assert PASSWORD not in result.stdout + result.stderr + out + err
    finally:
        etcd.stop()
