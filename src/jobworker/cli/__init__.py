"""The ``jobworker`` command line: ``jobworker run -- CMD`` and the service's commands.

A thin client of the public library (``jobworker``), the service's client
(``jobworker.client``) and its server (``jobworker.server``); never of a private
module.  ``main`` is the console script; docs/CLI.md is the user's manual.
"""

import sys
from typing import NoReturn

__all__ = ["main"]


def main() -> NoReturn:
    """The ``jobworker`` console script."""
    try:
        # Imported here, so that a Ctrl-C while the command loads (click, the commands)
        # ends it like any other Ctrl-C: exit 130, no traceback.
        from ._main import main as run_command
    except KeyboardInterrupt:
        sys.exit(130)
    run_command()
