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
TIMEOUT = 60  # seconds; a ruleset of many thousand rules lists in well under one


def available() -> bool:
    return shutil.which(NFT) is not None


def ruleset() -> list[dict[str, Any]]:
    """Every table, chain and rule of the namespace (`nft -j list ruleset`),
    without the metainfo entry."""
    out = _run("list the nftables ruleset", ["-j", "list", "ruleset"], None)
    try:
        items = json.loads(out or '{"nftables": []}')["nftables"]
    except (ValueError, KeyError, TypeError):
        raise KernelError("list the nftables ruleset", 0, "nft printed no JSON ruleset") from None
    return [item for item in items if "metainfo" not in item]


def apply(commands: list[dict[str, Any]], what: str) -> None:
    """Run commands as one transaction: all of them take effect, or none."""
    _run(what, ["-j", "-f", "-"], json.dumps({"nftables": commands}))


def _run(what: str, args: list[str], stdin: str | None) -> str:
    path = shutil.which(NFT)
    if path is None:
        raise KernelError(
            what, 0, "the nft command is missing: install the nftables package "
            "(Debian: apt-get install nftables)"
        )
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
