"""examples/systemd: the units run what they say, with the capabilities they
leave netapply (checked by running it so, in a sandbox)."""

from __future__ import annotations

import configparser
import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler import cli

REPO = Path(__file__).resolve().parent.parent
UNITS = REPO / "examples" / "systemd"
CHECKOUT = "/etc/netapply/checkout"


def unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(UNITS / name)
    return parser


def test_the_units_fit_together() -> None:
    watch = shlex.split(unit("netapply-watch.service")["Service"]["ExecStart"])
    pull = shlex.split(unit("netapply-git-pull.service")["Service"]["ExecStart"])
    assert watch[:2] == ["/usr/local/bin/netapply", "watch"]
    args = cli._parser().parse_args(watch[1:])
    assert args.command == "watch" and args.spec.startswith(CHECKOUT + "/")
    assert pull[:3] == ["/usr/bin/git", "-C", CHECKOUT]
    assert unit("netapply-git-pull.timer")["Timer"]["OnUnitActiveSec"]
    assert unit("netapply-watch.service")["Service"]["ExecReload"] == "/bin/kill -HUP $MAINPID"


def test_the_etcd_unit_runs_watch_on_etcd_with_the_options_of_its_environment() -> None:
    service = unit("netapply-watch-etcd.service")["Service"]
    env = {"NETAPPLY_SOURCE": "etcd://10.0.0.5:2379/netapply/shop",
           "NETAPPLY_OPTIONS": "--host node-a --address 10.0.0.21 --ttl 10"}
    # systemd's expansion: ${VAR} as one word, $VAR split at whitespace.
    argv = [word for part in shlex.split(service["ExecStart"])
            for word in ([env[part[2:-1]]] if part.startswith("${")
                         else env[part[1:]].split() if part.startswith("$") else [part])]
    args = cli._parser().parse_args(argv[1:])
    assert (args.command, args.source, args.host, args.address, args.ttl) == (
        "watch", env["NETAPPLY_SOURCE"], "node-a", "10.0.0.21", 10)
    assert service["KillSignal"] == "SIGTERM"
    assert service["CapabilityBoundingSet"] == \
        unit("netapply-watch.service")["Service"]["CapabilityBoundingSet"]


@pytest.mark.kernel
def test_watch_runs_with_the_units_capabilities(sandbox: Path) -> None:
    service = unit("netapply-watch.service")["Service"]
    caps = service["CapabilityBoundingSet"].split()
    argv = shlex.split(service["ExecStart"])
    spec = sandbox / "spec"
    spec.mkdir()
    (spec / "shop.yaml").write_text((REPO / "examples" / "shop.yaml").read_text())
    argv = [sys.executable, "-m", "reconciler.cli", *argv[1:-1], str(spec)]
    bounding = "-all," + ",".join("+" + c.removeprefix("CAP_").lower() for c in caps)
    log = sandbox / "watch.log"
    with open(log, "w") as err:
        process = subprocess.Popen(["setpriv", "--bounding-set", bounding, *argv], stderr=err,
                                   cwd=REPO)
        try:
            deadline = time.monotonic() + 20
            while '"reconcile"' not in log.read_text():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
    first = next(json.loads(line) for line in log.read_text().splitlines()
                 if '"reconcile"' in line)
    assert (first["result"], first["errors"]) == ("converged", [])
    assert first["actions"] > 0
