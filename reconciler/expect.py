"""Expectations checked with real packets (`expect`, SPEC.md).

Each check runs from inside the `from` container's network namespace: a
worker thread enters it (drivers.netlink.in_namespace) just long enough to
open a socket, which stays bound to that namespace (network_namespaces(7)),
and then sends from it. A `port` check is a TCP connect, an ICMP echo is
icmplib's request and reply matching over a raw socket (a datagram ICMP
socket where raw ones are not allowed). Checks run at the same time on a
bounded pool, so each takes at most TIMEOUT and many take little longer.

Where packets go (the README's "Expectations" says why):
- `to` an address: that address.
- `to` the `from` container itself: 127.0.0.1, its own loopback.
- `to` a container: its IPv4 address on the first network of `from` that it
  is attached to too (as Docker's DNS answers on a shared network); with none
  shared, its address on its first network known on this machine.
- `to` a container with network_mode host: the host, at the gateway of the
  first bridge network of `from` (127.0.0.1 from a host-mode container).
"""

from __future__ import annotations

import errno
import ipaddress
import os
import socket
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from icmplib import ICMPRequest, ICMPv4Socket, ICMPv6Socket
from icmplib.exceptions import (
    ICMPError,
    ICMPLibError,
    SocketPermissionError,
    TimeoutExceeded,
)
from icmplib.utils import unique_identifier

from reconciler import desired, expectspec, machines
from reconciler.drivers.netlink import in_namespace
from reconciler.errors import KernelError
from reconciler.model import Container, Expectation, IPAddress, NetworkMode, Spec
from reconciler.state.observe import ObservedState

TIMEOUT = 1.0  # seconds a TCP connect or an echo reply may take
MAX_PARALLEL = 16  # checks at once: 50 checks that all time out take about 4 s
LOOPBACK = ipaddress.IPv4Address("127.0.0.1")


class Outcome(StrEnum):
    HOLDS = "holds"
    FAILS = "fails"
    SKIPPED = "skipped"  # not this machine's to check (a note says why)


@dataclass(frozen=True)
class Check:
    """An expectation as this machine checks it: from which namespace ("" the
    process's own, the host's) to which address; or why it is not checked
    here (`skipped`), or why it cannot be (`problem`: it fails)."""

    expectation: Expectation
    ns: str = ""
    address: IPAddress | None = None
    skipped: str = ""
    problem: str = ""
    caution: str = ""  # why it cannot hold, though it is checked (a plan note)

    @property
    def runnable(self) -> bool:
        return not self.skipped and not self.problem

    def to_json(self) -> dict[str, Any]:
        e = self.expectation
        return {"index": e.index, "from": e.source, "to": e.target,
                "address": None if self.address is None else str(self.address),
                "what": "ping" if e.port is None else "tcp", "port": e.port, "reach": e.reach,
                "skipped": self.skipped or None, "problem": self.problem or None}


@dataclass(frozen=True)
class Result:
    """A check's result: whether the `from` container reached the address
    (None when it could not be tried), and what happened, in words."""

    check: Check
    reached: bool | None
    detail: str

    @property
    def outcome(self) -> Outcome:
        if self.check.skipped:
            return Outcome.SKIPPED
        if self.reached is None or self.reached != self.check.expectation.reach:
            return Outcome.FAILS
        return Outcome.HOLDS

    def to_json(self) -> dict[str, Any]:
        return {**self.check.to_json(), "reached": self.reached,
                "result": str(self.outcome), "detail": self.detail}


def checks(spec: Spec, observed: ObservedState, host: str | None = None) -> list[Check]:
    """How this machine (`host` of a spec with hosts) checks each of the
    spec's expectations, in written order. `spec` is resolved (runtime
    containers found); `observed` is what addresses are allocated from (the
    same allocation apply makes, desired.allocate). Pure."""
    if not spec.expect:
        return []
    endpoints: dict[str, list[desired.Endpoint]] = {}
    for ep in desired.allocate(spec, observed, host):
        endpoints.setdefault(ep.container.name, []).append(ep)
    return [_check(e, spec, endpoints, host) for e in spec.expect]


def _check(e: Expectation, spec: Spec, endpoints: dict[str, list[desired.Endpoint]],
           host: str | None) -> Check:
    origin = spec.containers[e.source]
    if not machines.runs_here(origin, host):
        return Check(e, skipped=f"from '{e.source}' runs on host '{origin.host}': checked "
                                "there, not on this machine")
    if not origin.running:
        return Check(e, skipped=f"from '{e.source}': its {origin.runtime} container "
                                f"'{origin.engine_name}' is not running")
    ns = origin.ns or ""
    address, problem = _target(e, origin, spec, endpoints)
    own = e.target == e.source or (address is not None and address.is_loopback)
    caution = ""
    if origin.network_mode == NetworkMode.NONE and e.reach and not own:
        caution = (f"from '{e.source}' has network_mode none: its namespace has only loopback, "
                   "so this check cannot hold (check it with reach: false, or from another "
                   "container)")
    return Check(e, ns, address, problem=problem, caution=caution)


def _target(e: Expectation, origin: Container, spec: Spec,
            endpoints: dict[str, list[desired.Endpoint]]) -> tuple[IPAddress | None, str]:
    """(address, "") or (None, why no address is known)."""
    if e.address is not None:
        return e.address, ""
    if e.target == e.source:
        return LOOPBACK, ""
    peer = spec.containers[e.target]
    if peer.network_mode == NetworkMode.HOST:
        if origin.network_mode == NetworkMode.HOST:
            return LOOPBACK, ""
        gateway = expectspec.host_gateway(origin, spec.networks)
        if gateway is None:
            return None, f"'{e.source}' is on no bridge network with a gateway, where the host is"
        return gateway, ""
    known = endpoints.get(e.target, [])
    for attachment in origin.attachments:
        for ep in known:
            if ep.network.name == attachment.network:
                return ep.ipv4, ""
    if known:
        return known[0].ipv4, ""
    explicit = [a.ipv4_address for a in peer.attachments if a.ipv4_address is not None]
    if explicit:
        return explicit[0], ""
    return None, (f"no address of '{e.target}' is known on this machine (it runs on host "
                  f"'{peer.host}' and shares no overlay network with '{e.source}'): name its "
                  "address in to")


def run(spec: Spec, observed: ObservedState, host: str | None = None,
        timeout: float = TIMEOUT) -> list[Result]:
    """Check every expectation of the spec with real packets (see checks()),
    MAX_PARALLEL at a time; each takes at most `timeout` seconds. Raises
    nothing for what the network does: a namespace that cannot be entered or
    a socket that cannot be made is a failed result saying so."""
    planned = checks(spec, observed, host)
    todo = [c for c in planned if c.runnable]
    probed: dict[int, tuple[bool | None, str]] = {}
    if todo:
        with ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(todo)),
                                thread_name_prefix="expect") as pool:
            answers = pool.map(lambda c: probe(c.ns, c.expectation, c.address, timeout), todo)
            probed = {c.expectation.index: answer for c, answer in zip(todo, answers,
                                                                        strict=True)}
    results = []
    for c in planned:
        reached, detail = probed.get(c.expectation.index, (None, c.skipped or c.problem))
        results.append(Result(c, reached, detail))
    return results


def probe(ns: str, e: Expectation, address: IPAddress | None,
          timeout: float = TIMEOUT) -> tuple[bool | None, str]:
    """(reached, what happened) for one check from namespace ns ("" this
    thread's own); reached is None when the check could not be tried."""
    assert address is not None
    try:
        if e.port is not None:
            return _connect(ns, address, e.port, timeout)
        return _echo(ns, address, timeout)
    except KernelError as err:
        return None, f"cannot enter the namespace of '{e.source}': {err}"


def _endpoint(address: IPAddress, port: int) -> str:
    return f"[{address}]:{port}" if address.version == 6 else f"{address}:{port}"


def _connect(ns: str, address: IPAddress, port: int, timeout: float) -> tuple[bool | None, str]:
    """A TCP connect. Refused counts as not reached: nothing that listens
    answered (a Docker user's "can web talk to db on 5432" is then no)."""
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    where = _endpoint(address, port)
    try:
        sock = in_namespace(ns, lambda: socket.socket(family, socket.SOCK_STREAM))
    except OSError as err:
        return None, f"cannot make a socket: {os.strerror(err.errno or errno.EIO)}"
    with sock:
        sock.settimeout(timeout)  # a nonblocking connect, polled up to timeout
        try:
            sock.connect((str(address), port))
        except TimeoutError:
            return False, f"no answer from {where} within {timeout:g} s"
        except ConnectionRefusedError:
            return False, f"{where} refused the connection (nothing listens there)"
        except OSError as err:
            return False, f"{where}: {os.strerror(err.errno or errno.EIO)}"
    return True, f"connected to {where}"


def _icmp_socket(address: IPAddress) -> Any:
    kind = ICMPv6Socket if address.version == 6 else ICMPv4Socket
    try:
        return kind(privileged=True)
    except SocketPermissionError:  # no CAP_NET_RAW: ping_group_range may allow this
        return kind(privileged=False)


def _echo(ns: str, address: IPAddress, timeout: float) -> tuple[bool | None, str]:
    """An ICMP echo request, and its reply (matched by id and sequence)."""
    try:
        sock = in_namespace(ns, lambda: _icmp_socket(address))
    except SocketPermissionError:
        return None, ("cannot make an ICMP socket: needs CAP_NET_RAW, or "
                      "net.ipv4.ping_group_range covering this group in that namespace")
    except ICMPLibError as err:
        return None, f"cannot make an ICMP socket: {err}"
    with sock:
        request = ICMPRequest(str(address), id=unique_identifier(), sequence=0)
        try:
            sock.send(request)
            sock.receive(request, timeout).raise_for_status()
        except TimeoutExceeded:
            return False, f"no echo reply from {address} within {timeout:g} s"
        except ICMPError as err:  # destination unreachable, time exceeded
            return False, f"{address}: {err}"
        except ICMPLibError as err:  # the send failed: no route, for one
            return False, f"{address}: {err}"
    return True, f"echo reply from {address}"


def failed(results: Sequence[Result]) -> list[Result]:
    return [r for r in results if r.outcome == Outcome.FAILS]


def notes(planned: Sequence[Check]) -> list[str]:
    """A note for each expectation not checked on this machine, or that
    cannot hold."""
    return [f"expect[{c.expectation.index}]: {c.skipped or c.caution}" for c in planned
            if c.skipped or c.caution]
