"""Who else filters traffic on this machine, from the names in its nftables
ruleset (pure). netapply never touches other tables, but their rules see the
same packets: a drop in any table is final, whatever netapply's table accepts.
"""

from __future__ import annotations

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
    for name, tables, prefixes in MANAGERS:
        if any(t in table for t in tables) or (chain and chain.startswith(prefixes or ("\0",))):
            return name
    if table.startswith(OWN_PREFIX):
        return f"netapply project '{table[len(OWN_PREFIX):]}'"
    return None


def notes(foreign: Foreign) -> list[str]:
    """Sentences for the plan about other firewall managers and about chains that
    drop forwarded traffic by default."""
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
    out.extend(_policy_note(c) for c in foreign.nft_chains if _drops_forwarding(c))
    return out


def _drops_forwarding(chain: NftChain) -> bool:
    return chain.hook == "forward" and chain.policy == "drop"


def _policy_note(chain: NftChain) -> str:
    return (
        f"chain {chain.family} {chain.table} {chain.name} drops forwarded packets by default "
        "(policy drop): containers' traffic to other machines and published ports need "
        "accept rules there"
    )
