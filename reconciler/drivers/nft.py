"""nftables through its JSON interface (`nft -j`), the one supported by the
nftables project for programs: no rule strings are built or parsed here.

`nft` runs in the namespace of the calling process, which is the machine's own
namespace (the only one netapply filters in).

When `nft` cannot list the ruleset, the names of the tables are still read
over nfnetlink, which needs no command: they tell whether the unread ruleset
may hold anything of a project.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import struct
import subprocess
from typing import Any

from reconciler.drivers import rtnl
from reconciler.errors import KernelError

NFT = "nft"
# Where Debian puts it, for a PATH without the sbin directories (cron's).
SBIN = "/usr/sbin:/sbin"
TIMEOUT = 60  # seconds; a ruleset of many thousand rules lists in well under one
WHAT = "list the nftables ruleset"

# nfnetlink (linux/netfilter/nfnetlink.h, nf_tables.h)
NETLINK_NETFILTER = 12
NFNL_SUBSYS_NFTABLES = 10
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE = 0, 1
NFTA_TABLE_NAME = 1
NFGENMSG = struct.Struct("=BBH")  # family, version, resource id
# NFPROTO_* numbers as nft names the families
FAMILIES = {1: "inet", 2: "ip", 3: "arp", 5: "netdev", 7: "bridge", 10: "ip6"}


def _command() -> str | None:
    return shutil.which(NFT) or shutil.which(NFT, path=SBIN)


def ruleset() -> list[dict[str, Any]]:
    """Every table, chain and rule of the namespace (`nft -j list ruleset`),
    without the metainfo entry."""
    out = _run(WHAT, ["-j", "list", "ruleset"], None)
    try:
        return _items(out)
    except ValueError:
        return _by_table()


def _items(out: str) -> list[dict[str, Any]]:
    try:
        items = json.loads(out or '{"nftables": []}')["nftables"]
    except (KeyError, TypeError):
        raise ValueError("no nftables list") from None
    return [item for item in items if "metainfo" not in item]


def _by_table() -> list[dict[str, Any]]:
    """nft 1.0.6 (Debian 12) prints broken JSON for a table with flags (a
    dormant one). List table by table instead; a table that still cannot be
    listed is reported with flags, so that the project's own is replaced."""
    items: list[dict[str, Any]] = []
    for line in _run(WHAT, ["list", "tables"], None).splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] != "table":
            continue
        family, name = parts[1], parts[2].strip('"')
        try:
            items.extend(_items(_run(WHAT, ["-j", "list", "table", family, name], None)))
        except ValueError:
            items.append({"table": {"family": family, "name": name, "flags": ["unreadable"]}})
    return items


def tables() -> list[tuple[str, str]]:
    """(family, name) of every table of the namespace, from a NFT_MSG_GETTABLE
    dump over nfnetlink (no nft command needed). A kernel without nf_tables has
    none: nfnetlink refuses its missing subsystem with EINVAL, and a kernel
    without nfnetlink the socket with EPROTONOSUPPORT. OSError otherwise."""
    try:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                             NETLINK_NETFILTER)
    except OSError as e:
        if e.errno == errno.EPROTONOSUPPORT:
            return []
        raise
    with sock:
        sock.bind((0, 0))
        kind = NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_GETTABLE
        body = NFGENMSG.pack(socket.AF_UNSPEC, 0, 0)
        sock.send(rtnl.HEADER.pack(rtnl.HEADER.size + len(body), kind,
                                   rtnl.NLM_F_REQUEST | rtnl.NLM_F_DUMP, 1, 0) + body)
        found: list[tuple[str, str]] = []
        while True:
            data = sock.recv(1 << 20)
            offset = 0
            while offset + rtnl.HEADER.size <= len(data):
                size, kind, _flags, _seq, _pid = rtnl.HEADER.unpack_from(data, offset)
                if size < rtnl.HEADER.size or kind == rtnl.NLMSG_DONE:
                    return found
                if kind == rtnl.NLMSG_ERROR:
                    (code,) = rtnl.ERRNO.unpack_from(data, offset + rtnl.HEADER.size)
                    if -code == errno.EINVAL:
                        return []
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return found
                if kind == NFNL_SUBSYS_NFTABLES << 8 | NFT_MSG_NEWTABLE:
                    start = offset + rtnl.HEADER.size
                    family = FAMILIES.get(data[start], str(data[start]))
                    message = data[offset:offset + size]
                    for key, value in rtnl.attrs(message, rtnl.HEADER.size + NFGENMSG.size):
                        if key == NFTA_TABLE_NAME:
                            found.append((family, bytes(value).split(b"\0", 1)[0].decode(
                                errors="replace")))
                offset += (size + 3) & ~3


def apply(commands: list[dict[str, Any]], what: str) -> None:
    """Run commands as one transaction: all of them take effect, or none."""
    _run(what, ["-j", "-f", "-"], json.dumps({"nftables": commands}))


def _run(what: str, args: list[str], stdin: str | None) -> str:
    path = _command()
    if path is None:
        raise KernelError(what, 0, "the nft command is not installed (Debian package nftables)")
    try:
        done = subprocess.run(
            [path, *args], input=stdin, capture_output=True, text=True, timeout=TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise KernelError(what, errno.ETIMEDOUT) from None
    except OSError as e:
        raise KernelError(what, e.errno or errno.EIO) from None
    if done.returncode != 0:
        detail = " ".join(done.stderr.split()) or f"nft exited with status {done.returncode}"
        # nft reports the kernel's refusal as text, with the failing command.
        raise KernelError(what, 0, detail)
    return done.stdout
