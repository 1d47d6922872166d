"""The command line of spec sources: `--source etcd://...` (plan, show,
watch) with etcdctl's TLS options, and `netapply push`. Arguments and output
only; the work is in sources/ and push.py."""

from __future__ import annotations

import argparse
import ipaddress
import os
from typing import TYPE_CHECKING

from rich.console import Console
from rich.markup import escape

from reconciler import fleet, lazy
from reconciler import spec as spec_mod
from reconciler.errors import NetapplyError, SpecError
from reconciler.model import IPAddress
from reconciler.sources import Source, Unavailable

if TYPE_CHECKING:
    from reconciler import engine
    from reconciler import push as push_mod
    from reconciler.drivers import netlink
    from reconciler.sources import etcd as etcd_mod
    from reconciler.sources import etcdsource, files, membership
else:  # every command's parser has these options: the etcd client (etcd3gw,
    # requests) and watchdog are imported only by a command that uses them
    engine, push_mod, netlink, etcd_mod, etcdsource, files, membership = (
        lazy.module(f"reconciler.{name}") for name in (
            "engine", "push", "drivers.netlink", "sources.etcd", "sources.etcdsource",
            "sources.files", "sources.membership"))

EXIT_OK, EXIT_ERROR = 0, 1
PUSH_HELP = ("validate a spec and write it to etcd in one transaction, guarded by the "
             "revision it is based on; prints the new revision")
URL = "etcd://HOST:PORT[,HOST:PORT...]/PREFIX"


def tls_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cacert", metavar="FILE",
                   help="verify etcd's certificate with this CA bundle (https)")
    p.add_argument("--cert", metavar="FILE", help="client certificate for etcd (with --key)")
    p.add_argument("--key", metavar="FILE", help="the client certificate's key")


def options(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """--source and the TLS options, on a command whose SPEC is then optional."""
    p.add_argument("--source", metavar="URL",
                   help=f"read the spec from etcd instead of SPEC: {URL} (one key per spec "
                        "file, PREFIX/NAME.yaml; user and password from ETCDCTL_USER and "
                        "ETCDCTL_PASSWORD)")
    tls_options(p)
    return p


def watch_options(p: argparse.ArgumentParser) -> None:
    """watch's options for live membership in etcd."""
    p.add_argument("--address", metavar="ADDR",
                   help="with --source: the underlay address this machine registers in etcd "
                        "(default: its host's address in the spec, else the address it "
                        "reaches etcd from)")
    p.add_argument("--ttl", type=int, default=fleet.DEFAULT_TTL, metavar="SECONDS",
                   help="with --source: the lease of this machine's registration; the others "
                        "drop it this long after it dies (default "
                        f"{fleet.DEFAULT_TTL})")


def push_parser(p: argparse.ArgumentParser) -> None:
    from reconciler.cli import COMPLETE_FILE  # the parser is built by cli, imported already

    p.add_argument("spec", metavar="SPEC", help="a YAML file or a directory of YAML files"
                   ).complete = COMPLETE_FILE  # type: ignore[attr-defined]
    p.add_argument("url", metavar="URL", help=URL)
    p.add_argument("--expect-revision", type=int, metavar="N",
                   help="write only if the spec in etcd is unchanged since revision N (the "
                        "one a pipeline planned against; default: the revision read now)")
    tls_options(p)


def store(url: str, args: argparse.Namespace) -> etcd_mod.Store:
    return etcd_mod.Store(etcd_mod.parse_location(url),
                          etcd_mod.Access.from_env(args.cacert, args.cert, args.key))


def _one(args: argparse.Namespace) -> None:
    if (args.spec is None) == (args.source is None):
        raise NetapplyError(f"{args.command} needs either SPEC or --source URL (not both)")


def source(args: argparse.Namespace) -> Source:
    """watch's source: the spec path, or the etcd URL. Raises NetapplyError."""
    _one(args)
    if args.source is not None:
        if args.ttl < 1:
            raise NetapplyError(f"--ttl {args.ttl}: a lease lasts at least 1 second")
        try:
            address = ipaddress.ip_address(args.address) if args.address else None
        except ValueError:
            raise NetapplyError(f"--address {args.address!r} is not an IP address") from None
        target = store(args.source, args)
        member = membership.Membership(target, membership.Identity(args.host, address, args.ttl))
        return etcdsource.EtcdSource(target, member, _local_addresses)
    if not os.path.exists(args.spec):
        raise NetapplyError(f"{args.spec}: no such file or directory")
    return files.FileSource(args.spec)


def _local_addresses() -> list[IPAddress]:
    kernel = netlink.NetlinkKernel()
    try:
        return engine.local_addresses(kernel)
    finally:
        kernel.close()


def read(args: argparse.Namespace, err: Console) -> spec_mod.Sources:
    """The spec files for plan and show: SPEC as named, or --source (said on
    stderr, with the revision read). Raises SpecError, NetapplyError."""
    _one(args)
    if args.source is None:
        return spec_mod.read(args.spec)
    if getattr(args, "out", None):
        raise NetapplyError("plan --out saves plans of spec files only: plan against a "
                            "checkout of the spec, or push and let watch apply it")
    found = etcdsource.EtcdSource(store(args.source, args))
    try:
        sources = found.read()
    finally:
        found.close()
    err.print(f"Read the spec from {escape(found.location)} at revision {sources.revision}.")
    return sources


def push(args: argparse.Namespace, out: Console, err: Console) -> int:
    try:
        target = store(args.url, args)
        try:
            pushed = push_mod.push(args.spec, target, args.expect_revision)
        finally:
            target.close()
    except SpecError as e:
        for problem in e.problems:
            err.print(f"[red]error:[/red] {escape(str(problem))}")
        err.print(f"{len(e.problems)} problem(s); nothing was pushed.")
        return EXIT_ERROR
    except push_mod.Conflict as e:
        err.print(f"[red]error:[/red] {escape(str(e))}")
        err.print(f"What to do: plan again against revision {e.won} (netapply plan --source "
                  f"{escape(args.url)}), then push with --expect-revision {e.won}.")
        return EXIT_ERROR
    except (etcd_mod.Compacted, Unavailable, NetapplyError) as e:
        err.print(f"[red]error:[/red] {escape(str(e))}; nothing was pushed.")
        return EXIT_ERROR
    changed = [*(f"wrote {n}" for n in pushed.written), *(f"deleted {n}" for n in pushed.deleted)]
    # The revision alone on stdout, for pipelines (REV=$(netapply push ...)).
    out.file.write(f"{pushed.revision}\n")
    out.file.flush()
    err.print(f"Pushed {escape(args.spec)} to {escape(args.url)} at revision "
              f"{pushed.revision} (based on revision {pushed.base})"
              + (f": {escape(', '.join(changed))}." if changed else "; no file changed."))
    return EXIT_OK
