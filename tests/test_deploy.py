"""The deployment files stay valid and in step with the code: the Dockerfile passes hadolint,
the YAML passes yamllint, the Kubernetes manifests validate against the Kubernetes schemas
(offline), and every command line they give `mission-control` is one its parser accepts."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from mission_control.server.cli import build_parser

from tests.support.procs import ROOT

BIN = Path(sys.executable).parent
MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
HEALTH_SERVICE = "mission_control.resilience.v1.ControlPlaneService"


def tool(name: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / name), *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )


def parses(argv: list[str]) -> None:
    """The CLI's own parser accepts argv (argparse exits on an unknown option)."""
    build_parser().parse_args(argv)


def test_dockerfile_passes_hadolint() -> None:
    done = tool("hadolint", "Dockerfile")
    assert done.returncode == 0, done.stdout + done.stderr


def test_yaml_passes_yamllint() -> None:
    done = tool("yamllint", "--strict", "deploy", ".yamllint.yaml")
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", ["1.30.0", "1.37.0"])
def test_manifests_validate_against_the_kubernetes_schemas(version: str) -> None:
    done = tool("kubernetes-validate", "--strict", "-k", version, *MANIFESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("passed") == len(MANIFESTS)


def _json_form(instruction: str, text: str) -> list[str]:
    match = re.search(rf"^{instruction}\s+(?:[^\n\[]*\s)?(\[[^\n]*\])[ \t]*$", text, re.M)
    assert match, instruction
    return yaml.safe_load(match.group(1))  # a JSON array is YAML too


def test_the_image_runs_commands_the_cli_accepts() -> None:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    assert _json_form("ENTRYPOINT", text) == ["mission-control"]
    parses(_json_form("CMD", text))
    health = _json_form("HEALTHCHECK", text)
    assert health[0] == "mission-control" and health[1] == "health"
    parses(health[1:])
    assert re.search(r"^USER 10001$", text, re.M), "the image runs as a non-root user"
    assert "COPY --from=build /dist/" in text, "only the wheel reaches the final stage"


def _documents() -> dict[str, Any]:
    return {doc["kind"]: doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())}


def test_the_deployment_wires_config_secrets_and_grpc_probes() -> None:
    docs = _documents()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    config = docs["ConfigMap"]["data"]
    # what Kubernetes puts in for $(VAR): the ConfigMap's values, a pod's name and address
    values = {"POD_IP": "127.0.0.7", "POD_NAME": "mission-control-7d9f-abcde", **config}
    for entry in container["env"]:
        ref = entry["valueFrom"].get("configMapKeyRef")
        if ref:
            assert ref["name"] == docs["ConfigMap"]["metadata"]["name"] and ref["key"] in config
        assert entry["name"] in values
    parses([re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in container["args"]])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "admin-tokens")
    tokens_file = next(a for a in container["args"] if a.startswith("--admin-tokens-file="))
    secret_key = next(iter(docs["Secret"]["stringData"]))
    assert tokens_file.split("=", 1)[1] == f"{mount['mountPath']}/{secret_key}"
    assert container["livenessProbe"]["grpc"]["service"] == ""
    assert container["readinessProbe"]["grpc"]["service"] == HEALTH_SERVICE
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    pdb = docs["PodDisruptionBudget"]["spec"]
    assert pdb["minAvailable"] < docs["Deployment"]["spec"]["replicas"]
    assert docs["Service"]["spec"]["selector"] == pdb["selector"]["matchLabels"]


def test_compose_runs_three_etcd_members_and_three_replicas() -> None:
    compose = yaml.safe_load((ROOT / "deploy" / "compose.yaml").read_text())
    services = compose["services"]
    etcd = sorted(n for n in services if n.startswith("etcd"))
    replicas = sorted(n for n in services if n.startswith("mc"))
    assert len(etcd) == 3 and len(replicas) == 3
    cluster = services[etcd[0]]["environment"]["ETCD_INITIAL_CLUSTER"]
    assert all(f"{name}=http://{name}:2380" in cluster for name in etcd)
    for name in replicas:
        argv = services[name]["command"]
        parses(argv)
        options = dict(zip(argv[1::2], argv[2::2], strict=False))
        assert options["--etcd"] == ",".join(f"{n}:2379" for n in etcd)
        assert options["--advertise"] == f"{name}:50051"
        assert services[name]["build"]["dockerfile"] == "Dockerfile"
        assert {f"{n}" for n in etcd} <= set(services[name]["depends_on"])
    published = [services[n]["ports"][0].split(":")[0] for n in replicas]
    assert len(set(published)) == 3
    for line in (ROOT / "deploy" / "compose.yaml").read_text().splitlines():
        if "exec mc1 mission-control" in line:  # the usage comment names a real command
            parses(shlex.split(line.split("exec mc1 mission-control", 1)[1]))


def _commands(markdown: str) -> list[list[str]]:
    """`mission-control ...` lines of the fenced shell blocks in a page, comments dropped."""
    blocks = re.findall(r"```sh\n(.*?)```", markdown, re.S)
    lines = [line.split("  #", 1)[0].strip() for block in blocks for line in block.splitlines()]
    return [shlex.split(line)[1:] for line in lines if line.startswith("mission-control ")]


def test_every_runbook_command_is_one_the_cli_accepts() -> None:
    pages = sorted((ROOT / "docs" / "runbooks").glob("*.md"))
    assert len(pages) >= 6
    seen = 0
    for page in pages:
        for argv in _commands(page.read_text()):
            try:
                parses(argv)
            except SystemExit as exit_:
                raise AssertionError(f"{page.name}: mission-control {shlex.join(argv)}") from exit_
            seen += 1
    assert seen >= 20
