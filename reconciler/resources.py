"""Resource values: the common shape of desired and observed state.

A state is a mapping from a resource key to a frozen resource value, so that
diffing is comparing. Fields marked `compare=False` are locators the drivers
need (the link's current name), not properties the planner diffs.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from typing import Any, ClassVar

Key = tuple[str, ...]

HOST_NS = ""  # the machine's own namespace in `ns` fields
RTPROT_NETAPPLY = 78  # route protocol number marking routes netapply installed
ALIAS_PREFIX = "netapply"
HOSTS_HEADER = "# managed by netapply project "


class Kind(StrEnum):
    FIREWALL = "firewall"
    DOCKER_USER = "docker-user"
    SYSCTL = "sysctl"
    NETNS = "netns"
    BRIDGE = "bridge"
    VETH = "veth"
    SUBLINK = "sublink"
    VXLAN = "vxlan"
    FDB = "fdb"
    NEIGH = "neigh"
    ADDRESS = "address"
    ROUTE = "route"
    HOSTS_TABLE = "hosts-table"
    HOSTS = "hosts"
    HOSTS_BLOCK = "hosts-block"
    LEFTOVER = "leftover"
    LEFTOVER_FILE = "leftover-file"


def _hex(text: str, length: int) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:length]


STAGING_FORM = re.compile(r"nt[0-9a-f]{13}")


def staging_prefix(project: str) -> str:
    """Links are created under a staging name ("nt", 6 hex digits of the project,
    7 of the object: 15 characters), then marked and renamed in one step. An
    unmarked link whose name has exactly that form with the project's digits is
    a leftover of an interrupted create by this project."""
    return "nt" + _hex(project, 6)


def staging_ifname(project: str, key: Key, end: str = "") -> str:
    return staging_prefix(project) + _hex("/".join((*key, end)), 7)


def is_staging_name(project: str, ifname: str) -> bool:
    return bool(STAGING_FORM.fullmatch(ifname)) and ifname.startswith(staging_prefix(project))


def parking_ifname(key: Key, field_name: str) -> str:
    """A temporary name for an owned link whose name another link wants (a swap)."""
    return "np" + _hex("/".join((*key, field_name)), 13)


@dataclass(frozen=True)
class Dep:
    """An edge to a resource that must exist first.

    cascade: the kernel removes this resource when the dependency goes away
    (an address with its link, a link with its namespace).
    lasting: the dependency must outlive this resource; False when it is only
    needed to create it (an IPv6 route's gateway address).
    """

    key: Key
    cascade: bool
    lasting: bool = True


def owner_alias(project: str, *parts: str) -> str:
    """The ifalias that marks a link (or a namespace's loopback) as owned."""
    return "/".join((ALIAS_PREFIX, project, *parts))


def link_alias(project: str, kind: str, container: str, network: str, end: str = "",
               allocated: str = "") -> str:
    """The mark of an attachment's link: `netapply/<project>/<kind>/<container>/
    <network>`, then `/host` for a veth's host end, then the allocation record."""
    parts = [kind, container, network, *([end] if end else []),
             *([allocated] if allocated else [])]
    return owner_alias(project, *parts)


def ns_label(ns: str) -> str:
    return "host" if ns == HOST_NS else ns


class _HostWide:
    """A resource of the machine's own namespace that needs nothing made first."""

    @property
    def ns(self) -> str:
        return HOST_NS

    @property
    def deps(self) -> tuple[Dep, ...]:
        return ()


@dataclass(frozen=True)
class Netns:
    """A named namespace the project created, marked by its loopback's alias."""

    kind: ClassVar[Kind] = Kind.NETNS
    name: str
    lo_up: bool = True

    @property
    def key(self) -> Key:
        return (self.kind, self.name)

    @property
    def ns(self) -> str:
        return self.name

    @property
    def deps(self) -> tuple[Dep, ...]:
        return ()

    def title(self) -> str:
        return f"netns {self.name}"


@dataclass(frozen=True)
class Bridge(_HostWide):
    kind: ClassVar[Kind] = Kind.BRIDGE
    network: str
    ifname: str
    mtu: int
    mac: str
    up: bool = True
    # net.ipv4.conf.<bridge>.route_localnet: lets the host reach published ports
    # through 127.0.0.1 (the DNATed packet leaves with a loopback source).
    localnet: bool = False
    # net.ipv4.conf.<bridge>.rp_filter = 2 (loose): replies of a container
    # whose published port is on another network arrive here with a source of
    # that network, which strict reverse-path filtering drops. Set, never
    # reverted, and a bridge already loose is left loose (desired.py).
    rp_loose: bool = False
    # IPv6 address generation on (IFLA_INET6_ADDR_GEN_MODE not none): the link
    # gets a link-local address when it comes up. Off on networks without IPv6
    # (desired.ipv6_ll).
    ipv6_ll: bool = True

    @property
    def key(self) -> Key:
        return (self.kind, self.network)

    def title(self) -> str:
        return f"bridge {self.ifname} (network {self.network})"


@dataclass(frozen=True)
class Veth:
    """A veth pair: the host end is a port of the network's bridge, the other end
    lives in the container's namespace under the attachment's interface name."""

    kind: ClassVar[Kind] = Kind.VETH
    container: str
    network: str
    ns: str  # named netns, or an absolute path for netns_path; "?" when unseen
    ifname: str
    mac: str
    mtu: int
    host_ifname: str
    host_mtu: int
    # The port's bridge: an owned bridge by network name ("?name" for any other
    # device), so that renaming a bridge does not look like a change of ports.
    master: str | None
    up: bool = True
    host_up: bool = True
    isolated: bool = False  # bridge port isolation of the host end (icc: false)
    # The host end may send a frame back where it came from: the container reaches
    # its own published port through a host address.
    hairpin: bool = False
    # The addresses netapply allocated to the attachment ("ipv4" or "ipv4,ipv6"),
    # recorded in the host end's mark: stickiness keeps these, never an address
    # someone put on the link by hand ("" where an older mark has none).
    allocated: str = ""
    # IPv6 address generation on (IFLA_INET6_ADDR_GEN_MODE not none): the link
    # gets a link-local address when it comes up. Off on networks without IPv6
    # (desired.ipv6_ll).
    ipv6_ll: bool = True
    host_ipv6_ll: bool = True  # the same for the host end
    owned_ns: bool = field(default=True, compare=False)  # ns is a Netns of the project
    master_ifname: str | None = field(default=None, compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.container, self.network)

    @property
    def deps(self) -> tuple[Dep, ...]:
        deps = [Dep((Kind.BRIDGE, self.network), cascade=False)]
        if self.owned_ns:
            # Not cascade: a namespace is torn down asynchronously, so its veths are
            # deleted explicitly first (the host end would linger otherwise).
            deps.insert(0, Dep((Kind.NETNS, self.ns), cascade=False))
        return tuple(deps)

    def title(self) -> str:
        return f"veth {self.ifname} (container {self.container}, network {self.network})"


@dataclass(frozen=True)
class Sublink:
    """A macvlan or ipvlan link on a parent interface of the machine, living in
    the container's namespace. The parent is never changed."""

    kind: ClassVar[Kind] = Kind.SUBLINK
    container: str
    network: str
    ns: str
    ifname: str
    driver: str  # "macvlan" or "ipvlan"
    parent: str  # the parent's name in the host namespace
    mode: str
    mac: str  # "" for ipvlan, whose links carry the parent's address
    mtu: int
    up: bool = True
    allocated: str = ""  # as Veth.allocated, recorded in the link's own mark
    ipv6_ll: bool = True  # as Bridge.ipv6_ll
    owned_ns: bool = field(default=True, compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.container, self.network)

    @property
    def deps(self) -> tuple[Dep, ...]:
        if self.owned_ns:
            return (Dep((Kind.NETNS, self.ns), cascade=False),)
        return ()

    def title(self) -> str:
        return (f"{self.driver} {self.ifname} on {self.parent} (container {self.container}, "
                f"network {self.network})")

    @staticmethod
    def own_mac(driver: str, mode: str, mac: str) -> str:
        """The MAC the link is compared by: "" where it carries the parent's
        (ipvlan, and a passthru macvlan), which netapply must never set."""
        return mac if driver == "macvlan" and mode != "passthru" else ""


@dataclass(frozen=True)
class Vxlan(_HostWide):
    """The VXLAN device of an overlay network on this machine: a port of the
    network's bridge that carries its frames to the other machines. Learning is
    off (forwarding comes from the spec) and ARP/ND are answered locally from
    the device's neighbour entries (proxy), as Docker's overlay driver does."""

    kind: ClassVar[Kind] = Kind.VXLAN
    network: str
    ifname: str
    vni: int
    local: str  # this machine's underlay address
    port: int  # UDP destination port
    mtu: int
    master: str | None  # the network whose owned bridge it is a port of
    up: bool = True
    isolated: bool = False  # bridge port isolation (icc: false), as on the containers' ports
    learning: bool = False
    proxy: bool = True
    ipv6_ll: bool = True  # as Bridge.ipv6_ll
    master_ifname: str | None = field(default=None, compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.network)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return (Dep((Kind.BRIDGE, self.network), cascade=False),)

    def title(self) -> str:
        return f"vxlan {self.ifname} (network {self.network}, vni {self.vni})"


ZERO_MAC = "00:00:00:00:00:00"


@dataclass(frozen=True)
class Fdb(_HostWide):
    """A static forwarding entry for an overlay. With `dst`, an entry of the
    VXLAN device: frames for `mac` go to the machine at `dst` (the all-zero MAC:
    broadcast and unknown frames, one entry per other machine). Without, an
    entry of the bridge: frames for a remote `mac` go to the VXLAN port, so the
    bridge never learns a container that moved here at its old place."""

    kind: ClassVar[Kind] = Kind.FDB
    network: str
    mac: str
    dst: str  # "" for the bridge's entry
    ifname: str = field(compare=False)  # the VXLAN device

    @property
    def key(self) -> Key:
        return (self.kind, self.network, self.mac, self.dst)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return (Dep((Kind.VXLAN, self.network), cascade=True),)

    def title(self) -> str:
        if not self.dst:
            return f"bridge entry {self.mac} -> {self.ifname}"
        what = "broadcast and unknown" if self.mac == ZERO_MAC else self.mac
        return f"forwarding entry {what} -> {self.dst} on {self.ifname}"


@dataclass(frozen=True)
class Neigh(_HostWide):
    """A permanent neighbour entry on an overlay's VXLAN device: the address of
    a container on another machine and its MAC, from which the device answers
    ARP and neighbour solicitations itself."""

    kind: ClassVar[Kind] = Kind.NEIGH
    network: str
    ip: str
    mac: str
    ifname: str = field(compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.network, self.ip)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return (Dep((Kind.VXLAN, self.network), cascade=True),)

    def title(self) -> str:
        return f"neighbour {self.ip} is {self.mac} on {self.ifname}"


@dataclass(frozen=True)
class Address:
    kind: ClassVar[Kind] = Kind.ADDRESS
    link: Key
    cidr: str  # "172.30.1.10/24"
    ns: str = field(compare=False)
    ifname: str = field(compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, *self.link, self.cidr)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return (Dep(self.link, cascade=True),)

    def title(self) -> str:
        return f"address {self.cidr} on {self.ifname}"


@dataclass(frozen=True)
class Route:
    kind: ClassVar[Kind] = Kind.ROUTE
    ns: str
    dst: str  # CIDR; "0.0.0.0/0" and "::/0" are default routes
    via: str
    link: Key  # the veth the route leaves through
    ifname: str = field(compare=False)
    source: Key | None = field(default=None, compare=False)  # address making `via` reachable

    @property
    def key(self) -> Key:
        return (self.kind, self.ns, self.dst)

    @property
    def deps(self) -> tuple[Dep, ...]:
        deps = [Dep(self.link, cascade=True)]
        if self.source is not None:
            # Removing an IPv4 address removes the routes through it; IPv6 keeps
            # them, so there the address is needed only to create the route.
            v4 = ":" not in self.via
            deps.append(Dep(self.source, cascade=v4, lasting=v4))
        return tuple(deps)

    def title(self) -> str:
        if self.dst in ("0.0.0.0/0", "::/0"):
            # Which network gives each family's default route (SPEC.md default_route).
            family = "IPv6" if ":" in self.dst else "IPv4"
            return (f"route default via {self.via} dev {self.ifname} ({family} default from "
                    f"network {self.link[-1]})")
        return f"route {self.dst} via {self.via} dev {self.ifname}"


def tables_dir(project: str) -> str:
    """Where a project keeps its hosts tables, beside the namespaces' own dirs."""
    return f".netapply-{project}"


@dataclass(frozen=True)
class HostsTable(_HostWide):
    """The hosts lines of one set of networks, shared by every container attached
    to exactly that set: a change of one address rewrites one table, not the
    hosts file of every peer."""

    kind: ClassVar[Kind] = Kind.HOSTS_TABLE
    project: str
    name: str  # a digest of the set of networks
    content: str

    @property
    def key(self) -> Key:
        return (self.kind, self.name)

    @property
    def path(self) -> str:
        return f"/etc/netns/{tables_dir(self.project)}/{self.name}"

    def title(self) -> str:
        return f"hosts table {self.path}"


@dataclass(frozen=True)
class HostsFile:
    """/etc/netns/<netns>/hosts, which `ip netns exec` mounts over /etc/hosts: a
    symbolic link to the container's hosts table ("" when it is no such link)."""

    kind: ClassVar[Kind] = Kind.HOSTS
    netns: str
    link: str

    @property
    def key(self) -> Key:
        return (self.kind, self.netns)

    @property
    def ns(self) -> str:
        return self.netns

    @property
    def deps(self) -> tuple[Dep, ...]:
        deps = [Dep((Kind.NETNS, self.netns), cascade=False)]
        if self.link:
            # Needed to create the link; when a container changes networks its old
            # table goes in the delete phase, a moment before the link moves on.
            table = (Kind.HOSTS_TABLE, self.link.rsplit("/", 1)[-1])
            deps.append(Dep(table, cascade=False, lasting=False))
        return tuple(deps)

    def title(self) -> str:
        return f"hosts file /etc/netns/{self.netns}/hosts"


def hosts_block_markers(project: str) -> tuple[str, str]:
    """The first and last line of a project's block in an engine's hosts file."""
    return (f"# BEGIN netapply project {project} (managed: changes here are overwritten)",
            f"# END netapply project {project}")


def splice_hosts_block(text: str, project: str, lines: str | None) -> str:
    """text with the project's block replaced by `lines` (appended when there was
    none; removed when lines is None). What the engine wrote stays as it was."""
    begin, end = hosts_block_markers(project)
    kept: list[str] = []
    inside = False
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if bare == begin:
            inside = True
        elif inside and bare == end:
            inside = False
        elif not inside:
            kept.append(line)
    out = "".join(kept)
    if out and not out.endswith("\n"):
        out += "\n"
    if lines is not None:
        out += f"{begin}\n{lines}{end}\n"
    return out


def hosts_block_of(text: str, project: str) -> str | None:
    """The lines of the project's block in text, None when it has none."""
    begin, end = hosts_block_markers(project)
    found: list[str] | None = None
    for line in text.splitlines(keepends=True):
        bare = line.rstrip("\n")
        if found is None:
            if bare == begin:
                found = []
        elif bare == end:
            return "".join(found)
        else:
            found.append(line)
    return None  # no block, or one cut short: rewritten whole


@dataclass(frozen=True)
class HostsBlock:
    """The DNS names of a runtime container (and its peers), as a marked block in
    the hosts file its engine gave it (Docker's and Podman's `HostsPath`), which
    the engine bind-mounts by inode: written in place, the engine's lines kept."""

    kind: ClassVar[Kind] = Kind.HOSTS_BLOCK
    project: str
    container: str
    content: str  # the lines between the markers
    ns: str = field(compare=False)  # the container's namespace (for grouping in plans)
    path: str = field(compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.container)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return ()

    def title(self) -> str:
        return f"hosts block in {self.path}"


@dataclass(frozen=True)
class Leftover:
    """An unmarked link under the project's staging prefix: a create that was
    interrupted before its link was marked. Never desired; always deleted."""

    kind: ClassVar[Kind] = Kind.LEFTOVER
    ns: str
    ifname: str
    owned_ns: bool = field(default=False, compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.ns, self.ifname)

    @property
    def deps(self) -> tuple[Dep, ...]:
        return (Dep((Kind.NETNS, self.ns), cascade=True),) if self.owned_ns else ()

    def title(self) -> str:
        return f"leftover link {self.ifname} of an interrupted apply"


@dataclass(frozen=True)
class LeftoverFile(_HostWide):
    """What an interrupted run left under a name the project's: an empty file in
    /run/netns that no namespace is mounted on, an empty directory in /etc/netns,
    a half-written file (`*.netapply-tmp`). Never desired; always deleted, so
    that `ip netns add` and the next apply find the name free."""

    kind: ClassVar[Kind] = Kind.LEFTOVER_FILE
    path: str
    directory: bool = False

    @property
    def key(self) -> Key:
        return (self.kind, self.path)

    def title(self) -> str:
        what = "directory" if self.directory else "file"
        return f"leftover {what} {self.path} of an interrupted run"


COMMENT_MAX = 128  # nftables' limit on a rule comment


@dataclass(frozen=True)
class Rule:
    """One nftables rule: its chain, its comment (what it is for, in words) and
    its expressions as canonical JSON, so that rules compare as strings."""

    chain: str
    comment: str
    expr: str

    @staticmethod
    def of(chain: str, comment: str, expr: list[dict[str, Any]]) -> Rule:
        return Rule(chain, comment[:COMMENT_MAX], canonical([_squash(e) for e in expr]))

    def text(self) -> str:
        return f"{self.chain}: {self.comment or '(no comment) ' + self.expr}"

    def to_json(self) -> dict[str, Any]:
        return {"chain": self.chain, "comment": self.comment, "expr": json.loads(self.expr)}


JSON_TEXT = "json_text"  # dataclass field metadata: the values are canonical JSON text


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _squash(value: Any) -> Any:
    """nft versions differ in printing a one-element list ("flags": ["daddr"])
    or its element ("flags": "daddr"), and read both; compare (and write) the
    element, so that a rule reads back equal under either."""
    if isinstance(value, list):
        return _squash(value[0]) if len(value) == 1 else [_squash(v) for v in value]
    if isinstance(value, dict):
        return {k: _squash(v) for k, v in value.items()}
    return value


@dataclass(frozen=True)
class Firewall(_HostWide):
    """The project's own nftables table (family inet), replaced as a whole in
    one transaction whenever any chain or rule differs."""

    kind: ClassVar[Kind] = Kind.FIREWALL
    table: str
    # Canonical JSON of each base chain, in order (compared as text; shown
    # and given to pipelines as the objects they are: JSON_TEXT).
    chains: tuple[str, ...] = field(metadata={JSON_TEXT: True})
    rules: tuple[Rule, ...]  # in chain order, then rule order

    @property
    def key(self) -> Key:
        return (self.kind, self.table)

    def title(self) -> str:
        return f"nftables table inet {self.table} ({len(self.rules)} rules)"


DOCKER_USER_TABLE = "filter"
DOCKER_USER_CHAIN = "DOCKER-USER"


def docker_user_comment(project: str, what: str) -> str:
    """The mark of a project's rule in DOCKER-USER: `netapply/<project>: <what>`."""
    return f"{ALIAS_PREFIX}/{project}: {what}"[:COMMENT_MAX]


@dataclass(frozen=True)
class DockerUser(_HostWide):
    """The project's accept rules in Docker's DOCKER-USER chain (nftables table
    `<family> filter`, as iptables-nft makes it), the chain Docker reserves for
    users' rules: where Docker's FORWARD policy drops, they let the project's
    bridges forward, and the project's own table does the filtering. Each rule's
    comment marks it as the project's; nothing else of Docker's is touched."""

    kind: ClassVar[Kind] = Kind.DOCKER_USER
    family: str  # "ip", or "ip6" where Docker made that chain too
    rules: tuple[Rule, ...]
    handles: tuple[int, ...] = field(default=(), compare=False)  # as observed

    @property
    def key(self) -> Key:
        return (self.kind, self.family)

    def title(self) -> str:
        return (f"{len(self.rules)} accept rule(s) in {DOCKER_USER_CHAIN} "
                f"({self.family} {DOCKER_USER_TABLE})")


@dataclass(frozen=True)
class Sysctl(_HostWide):
    """A machine-wide setting the spec needs. Shared with everything else on the
    machine, so netapply sets it but never reverts it (as Docker does)."""

    kind: ClassVar[Kind] = Kind.SYSCTL
    shared: ClassVar[bool] = True
    name: str  # path under /proc/sys: "net/ipv4/ip_forward"
    value: str
    why: str = field(default="", compare=False)

    @property
    def key(self) -> Key:
        return (self.kind, self.name)

    def title(self) -> str:
        why = f" ({self.why})" if self.why else ""
        return f"sysctl {self.name.replace('/', '.')} = {self.value}{why}"


Resource = (
    Firewall | DockerUser | Sysctl | Netns | Bridge | Veth | Sublink | Vxlan | Fdb | Neigh
    | Address | Route | HostsTable | HostsFile | HostsBlock | Leftover | LeftoverFile
)
State = Mapping[Key, Resource]


def diff_fields(before: Resource, after: Resource) -> list[tuple[str, object, object]]:
    """The compared fields that differ, in declaration order."""
    return [
        (f.name, getattr(before, f.name), getattr(after, f.name))
        for f in fields(before)
        if f.compare and getattr(before, f.name) != getattr(after, f.name)
    ]


def fields_json(res: Resource) -> dict[str, object]:
    """The compared fields as JSON values (keys become lists; a field kept as
    JSON text, marked JSON_TEXT, becomes the objects it holds: no value is
    JSON inside a string)."""
    out: dict[str, object] = {}
    for f in fields(res):
        if f.compare:
            value = getattr(res, f.name)
            if isinstance(value, tuple):
                decode = json.loads if f.metadata.get(JSON_TEXT) else None
                value = [v.to_json() if isinstance(v, Rule) else decode(v) if decode else v
                         for v in value]
            out[f.name] = value
    return out


def is_shared(res: Resource) -> bool:
    """A machine-wide setting: ensured while wanted, never deleted."""
    return bool(getattr(res, "shared", False))


def state_of(resources: list[Resource]) -> dict[Key, Resource]:
    return {r.key: r for r in resources}
