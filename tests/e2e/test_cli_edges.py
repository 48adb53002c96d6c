"""Odd input at every CLI entry point, as a user types it: each gets the documented exit status
(3 for a usage error, never argparse's 2, which reads as AMBIGUOUS), one line on stderr that
names the field and what to do, and no traceback. Each command runs as a subprocess; none of
these cases may start a stack (they fail before, so each takes a fraction of a second)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.e2e.cases import ROOT, SHOP

TIMEOUT_S = 30
REQUEST = ["--src", "10.244.1.2", "--dst", "10.244.2.3", "--port", "5432", "--protocol", "tcp"]
TRACE = ["trace", "iptables", "--node-ip", "10.0.0.1", "--src", "10.244.1.2", "--dst", "10.244.2.3",
         "--protocol", "tcp"]


@dataclass(frozen=True)
class Case:
    argv: tuple[str, ...]
    says: tuple[str, ...]  # every one of these is in the one stderr line
    module: str = "services.cli"
    no_cluster: bool = False  # run with no kubeconfig anywhere (empty HOME, no KUBECONFIG)


def run(module: str, argv: list[str], *, no_cluster: bool = False, cwd: Path = ROOT,
        stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if no_cluster:
        for name in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT", "NETDIAG_KUBECONFIG",
                     "NETDIAG_SNAPSHOT"):
            env.pop(name, None)
        env["HOME"] = str(cwd / ".no-home")
    return subprocess.run([sys.executable, "-m", module, *argv], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S, input=stdin)


def assert_usage_error(proc: subprocess.CompletedProcess[str], *says: str) -> None:
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for text in says:
        assert text in lines[0], (text, lines[0])
    assert proc.stdout == "", proc.stdout


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    (d / "binary.jsonl").write_bytes(b"\x7fELF\x02\x01\x01\x00\x00\x00" + bytes(range(256)))
    (d / "cut.save").write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n-A FORWARD -j DROP\n")
    (d / "empty.save").write_text("")
    (d / "garbled.save").write_text("*filter\n:INPUT ACCEPT [0:0]\nthis is not a rule\nCOMMIT\n")
    (d / "prose.save").write_text("hello\nworld\n")
    (d / "no-kubeconfig-here").mkdir()
    return d


CASES: dict[str, Case] = {
    # diagnose
    "diagnose port 0": Case(("diagnose", "--port", "0"), ("--port", "1-65535")),
    "diagnose port 70000": Case(("diagnose", "--port", "70000"), ("--port", "1-65535")),
    "diagnose port word": Case(("diagnose", "--port", "http"), ("--port", "'http'")),
    "diagnose protocol icmp": Case(("diagnose", "--protocol", "icmp"), ("--protocol", "tcp", "udp")),
    "collect-timeout 0": Case(("diagnose", "--collect-timeout", "0"), ("--collect-timeout", "greater than 0")),
    "collect-timeout -5": Case(("diagnose", "--collect-timeout", "-5"), ("--collect-timeout", "greater than 0")),
    "collect-timeout 1000": Case(("diagnose", "--collect-timeout", "1000"), ("--collect-timeout", "60")),
    "collect-timeout word": Case(("diagnose", "--collect-timeout", "soon"), ("--collect-timeout", "not a number")),
    "log-level bogus": Case(("--log-level", "bogus", "diagnose"), ("--log-level", "'bogus'", "debug")),
    "server with snapshot": Case(("diagnose", "--server", "http://127.0.0.1:9", "--snapshot", "x", *REQUEST),
                                 ("--snapshot", "not allowed with", "--server")),
    "snapshot with kubeconfig": Case(("diagnose", "--snapshot", "x", "--kubeconfig", "y", *REQUEST),
                                     ("--kubeconfig", "not allowed with", "--snapshot")),
    "snapshot missing": Case(("diagnose", "--snapshot", "/nonexistent", *REQUEST),
                             ("--snapshot /nonexistent", "no such directory", "examples/snapshots/shop")),
    "snapshot not a snapshot": Case(("diagnose", "--snapshot", "docs", *REQUEST), ("--snapshot docs", "kubernetes/")),
    "missing fields": Case(("diagnose", "--snapshot", str(SHOP), "--src", "10.244.1.2"),
                           ("--dst", "--port", "--protocol", "--batch")),
    "src not an address": Case(("diagnose", "--snapshot", str(SHOP), "--src", "web-1", *REQUEST[2:]), ("--src",)),
    "unknown flag": Case(("diagnose", "--frobnicate"), ("unrecognized arguments", "--frobnicate")),
    "no command": Case((), ("COMMAND",)),
    "unknown command": Case(("diagnoze",), ("'diagnoze'",)),
    "batch missing": Case(("diagnose", "--snapshot", str(SHOP), "--batch", "/nonexistent.jsonl"),
                          ("--batch /nonexistent.jsonl", "no such file")),
    "batch directory": Case(("diagnose", "--snapshot", str(SHOP), "--batch", "{files}"), ("is a directory",)),
    "batch binary": Case(("diagnose", "--snapshot", str(SHOP), "--batch", "{files}/binary.jsonl"),
                         ("binary", "one JSON request per line")),
    "batch with request flags": Case(("diagnose", "--batch", "-", "--src", "10.0.0.1"), ("--batch", "--src")),
    "server not a url": Case(("diagnose", "--server", "ftp://x", *REQUEST), ("--server", "http://")),
    "diagnose no cluster": Case(("diagnose", *REQUEST), ("--kubeconfig", "--snapshot examples/snapshots/shop"),
                                no_cluster=True),
    "diagnose kubeconfig missing": Case(("diagnose", "--kubeconfig", "/nonexistent", *REQUEST),
                                        ("--kubeconfig /nonexistent", "no such file")),
    # trace iptables
    "trace mark zz": Case((*TRACE, "--save", "x", "--port", "80", "--mark", "zz"), ("--mark", "'zz'", "0x4000")),
    "trace port 0": Case((*TRACE, "--save", "{files}/cut.save", "--port", "0"),
                         ("--port", "greater than or equal to 1")),
    "trace save missing": Case((*TRACE, "--save", "/nonexistent.save", "--port", "80"),
                               ("/nonexistent.save", "No such file")),
    "trace save cut": Case((*TRACE, "--save", "{files}/cut.save", "--port", "80"),
                           ("COMMIT expected at line 5", "*filter")),
    "trace save empty": Case((*TRACE, "--save", "{files}/empty.save", "--port", "80"), ("empty",)),
    "trace save garbled": Case((*TRACE, "--save", "{files}/garbled.save", "--port", "80"),
                               ("line 3 failed", "this is not a rule")),
    "trace save prose": Case((*TRACE, "--save", "{files}/prose.save", "--port", "80"), ("line 1 failed",)),
    "trace no engine": Case(("trace",), ("iptables",)),
    # matrix
    "matrix port 0": Case(("matrix", "--snapshot", str(SHOP), "--port", "0"), ("--port", "1-65535")),
    "matrix port 70000": Case(("matrix", "--snapshot", str(SHOP), "--port", "70000"), ("--port", "1-65535")),
    "matrix namespace nope": Case(("matrix", "--snapshot", str(SHOP), "--namespace", "nope"),
                                  ("--namespace nope", "no such namespace", "shop")),
    "matrix snapshot missing": Case(("matrix", "--snapshot", "/nonexistent"), ("--snapshot /nonexistent",)),
    "matrix no snapshot": Case(("matrix",), ("--snapshot",)),
    "matrix batch missing": Case(("matrix", "--snapshot", str(SHOP), "--batch", "/nonexistent.jsonl"),
                                 ("no such file",)),
    # snapshot
    "snapshot no action": Case(("snapshot",), ("ACTION",)),
    "snapshot capture no out": Case(("snapshot", "capture"), ("--out",)),
    "snapshot capture kubeconfig missing": Case(("snapshot", "capture", "--out", "/tmp/x", "--kubeconfig",
                                                 "/nonexistent"), ("--kubeconfig /nonexistent", "no such file")),
    "snapshot capture no cluster": Case(("snapshot", "capture", "--out", "/tmp/x"),
                                        ("no Kubernetes cluster", "--kubeconfig", "--snapshot"), no_cluster=True),
    # up: never "up" and ready while no cluster model can load
    "up no cluster": Case(("up", "--port", "0"), ("no Kubernetes cluster", "--kubeconfig",
                                                  "--snapshot examples/snapshots/shop"), no_cluster=True),
    "up snapshot missing": Case(("up", "--port", "0", "--snapshot", "/nonexistent"), ("--snapshot /nonexistent",)),
    "up snapshot and kubeconfig": Case(("up", "--snapshot", "x", "--kubeconfig", "y"), ("not allowed with",)),
    # kubectl netdiag
    "kubectl no from": Case(("diagnose", "--to", "svc/api", "--port", "80"), ("--from",), module="services.kubectl"),
    "kubectl port 0": Case(("diagnose", "--from", "pod/a", "--to", "svc/b", "--port", "0"), ("--port", "1-65535"),
                           module="services.kubectl"),
    "kubectl kubeconfig missing": Case(("diagnose", "--from", "pod/a", "--to", "svc/b", "--port", "80",
                                        "--kubeconfig", "/nonexistent"), ("--kubeconfig /nonexistent", "no such file"),
                                       module="services.kubectl"),
    "kubectl no cluster": Case(("diagnose", "--from", "pod/a", "--to", "svc/b", "--port", "80"),
                               ("no Kubernetes cluster", "--kubeconfig"), module="services.kubectl", no_cluster=True),
    "kubectl collect-timeout": Case(("diagnose", "--from", "pod/a", "--to", "svc/b", "--port", "80",
                                     "--collect-timeout", "-5"), ("--collect-timeout",), module="services.kubectl"),
    "kubectl other command": Case(("matrix", "--snapshot", str(SHOP), "--port", "0"), ("--port",),
                                  module="services.kubectl"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_usage_error(name: str, files: Path) -> None:
    case = CASES[name]
    argv = [a.replace("{files}", str(files)) for a in case.argv]
    assert_usage_error(run(case.module, argv, no_cluster=case.no_cluster, cwd=files), *case.says)


def test_help_is_not_an_error() -> None:
    for module in ("services.cli", "services.kubectl"):
        proc = run(module, ["--help"])
        assert proc.returncode == 0 and "diagnose" in proc.stdout, proc.stderr
    proc = run("services.cli", ["trace", "iptables", "--help"])
    assert proc.returncode == 0 and "--save" in proc.stdout


# ------------------------------------------------------------------ trace iptables: right answers


def test_trace_mixed_verdicts_never_add_past_100_percent(tmp_path: Path) -> None:
    """Two unsupported rules each explored both ways: three alternative outcomes, none of them a
    share of the packet (they used to print as 200 % DROP beside 100 % ACCEPT)."""
    save = tmp_path / "odd.save"
    save.write_text("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n"
                    "-A FORWARD -m weirdmatch --foo bar -j DROP\n-A FORWARD -m weirdmatch2 --foo bar -j DROP\n"
                    "COMMIT\n")
    proc = run("services.cli", [*TRACE, "--save", str(save), "--port", "80", "--output", "json"])
    assert proc.returncode == 1, proc.stderr  # some branch drops
    import json

    report = json.loads(proc.stdout)
    assert report["verdict"] == "MIXED"
    known = [d["probability"] for d in report["destinations"] if d["probability"] is not None]
    assert sum(known) <= 1.0 + 1e-9
    assert {(d["verdict"], d["probability"]) for d in report["destinations"]} == {("DROP", None), ("ACCEPT", None)}
    text = run("services.cli", [*TRACE, "--save", str(save), "--port", "80"]).stdout
    assert "200.00%" not in text and "possible" in text
