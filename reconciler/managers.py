"""Who else filters traffic on this machine, from the names in its nftables
ruleset (pure). netapply never touches other tables, but their rules see the
same packets: a drop in any table is final, whatever netapply's table accepts.
"""

from __future__ import annotations

from reconciler.resources import DOCKER_USER_CHAIN, DOCKER_USER_TABLE
from reconciler.state.observe import Foreign, NftChain

# (manager, table names that are its own, chain name prefixes it uses)
MANAGERS: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    ("Docker", ("docker",), ("DOCKER",)),
    ("netavark (Podman)", ("netavark",), ("NETAVARK",)),
    ("CNI plugins", ("cni",), ("CNI-",)),
    ("firewalld", ("firewalld",), ()),
    ("ufw", (), ("ufw-", "ufw6-")),
    ("kube-proxy (Kubernetes)", ("kube-proxy",), ("KUBE-",)),
    ("Calico", ("calico",), ("cali-",)),
    ("Cilium", ("cilium",), ("CILIUM_",)),
)
OWN_PREFIX = "netapply-"


def _manager(table: str, chain: str = "") -> str | None:
    if table.startswith(OWN_PREFIX):
        return f"netapply project '{table[len(OWN_PREFIX):]}'"
    words = set(table.replace("_", "-").split("-"))
    for name, tables, prefixes in MANAGERS:
        if table in tables or words & set(tables) or (prefixes and chain.startswith(prefixes)):
            return name
    return None


def notes(foreign: Foreign, filtering: bool) -> list[str]:
    """Sentences for the plan: when the spec filters (has bridge networks), about
    other firewall managers and chains that drop forwarded traffic by default.
    (A ruleset that could not be read is engine.py's to say.)"""
    if not filtering:
        return []
    seen: dict[str, set[str]] = {}
    for family, table in foreign.nft_tables:
        manager = _manager(table)
        if manager is not None:
            seen.setdefault(manager, set()).add(f"{family} {table}")
    for chain in foreign.nft_chains:
        manager = _manager(chain.table, chain.name)
        if manager is not None:
            seen.setdefault(manager, set()).add(f"{chain.family} {chain.table}")
    out = [
        f"{manager} also filters traffic on this machine (nftables table "
        f"{', '.join(sorted(tables))}); a drop there is final, whatever netapply accepts"
        for manager, tables in sorted(seen.items())
    ]
    # Where Docker's DOCKER-USER chain is beside a dropping FORWARD chain, the
    # project's own accept rules there let its bridges through (desired.py).
    user = {c.family for c in foreign.nft_chains
            if (c.table, c.name) == (DOCKER_USER_TABLE, DOCKER_USER_CHAIN)}
    for c in foreign.nft_chains:
        if _drops_forwarding(c):
            out.append(_docker_user_note(c) if c.table == DOCKER_USER_TABLE
                       and c.family in user else _policy_note(c))
    return out


def forwarding_note(observed_value: str | None, wanted: bool) -> str | None:
    """Switching IPv4 forwarding on makes the machine a router between all its
    interfaces, not only the project's bridges: say so before it happens."""
    if not wanted or observed_value == "1":
        return None
    return (
        "IPv4 forwarding is off on this machine and apply switches it on for good; from then "
        "on the machine also routes between its other interfaces unless a firewall drops "
        "that traffic (Docker sets its FORWARD policy to drop for this reason)"
    )


def _docker_user_note(chain: NftChain) -> str:
    return (
        f"chain {chain.family} {chain.table} {chain.name} drops forwarded packets by default "
        f"(Docker's policy); netapply lets the project's bridges through with its own accept "
        f"rules in {DOCKER_USER_CHAIN}, the chain Docker keeps for users"
    )


def _drops_forwarding(chain: NftChain) -> bool:
    return chain.hook == "forward" and chain.policy == "drop"


def _policy_note(chain: NftChain) -> str:
    return (
        f"chain {chain.family} {chain.table} {chain.name} drops forwarded packets by default "
        "(policy drop): containers' traffic to other machines and published ports need "
        "accept rules there"
    )
