"""nftables through its JSON interface (`nft -j`), the one supported by the
nftables project for programs: no rule strings are built or parsed here.

`nft` runs in the namespace of the calling process, which is the machine's own
namespace (the only one netapply filters in).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from typing import Any

from reconciler.errors import KernelError

NFT = "nft"
# Where Debian puts it, for a PATH without the sbin directories (cron's).
SBIN = "/usr/sbin:/sbin"
TIMEOUT = 60  # seconds; a ruleset of many thousand rules lists in well under one
WHAT = "list the nftables ruleset"


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
