"""The `netapply` command's entry point: Ctrl-C while the program is still
starting (importing its modules, reading its arguments) ends it with
"interrupted" and 130, as it does once running, not with a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from reconciler import cli

        return cli.main()
    except KeyboardInterrupt:
        # Only before Cli.run: from there on, an interruption is handled
        # (and reported) where it lands.
        sys.stderr.write("interrupted\n")
        return 130
