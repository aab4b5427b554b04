"""The ``jobworker`` command line: ``jobworker run -- CMD`` and the service's commands.

A thin client of the public library (``jobworker``), the service's client
(``jobworker.client``) and its server (``jobworker.server``); never of a private
module.  ``main`` is the console script; docs/CLI.md is the user's manual.
"""

from __future__ import annotations

import signal

TYPE_CHECKING = False  # (typing's import is slow; type checkers take any TYPE_CHECKING as true)
if TYPE_CHECKING:
    from typing import NoReturn

__all__ = ["main"]


def main() -> NoReturn:
    """The ``jobworker`` console script."""
    # A Ctrl-C while the command loads (click, the commands) ends it as it ends any
    # program that has not started yet: killed by SIGINT, with no traceback.  Python's
    # KeyboardInterrupt would print one from whichever import it interrupted.  Only a few
    # lines of the console script and this package's two small __init__ modules run
    # before this.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    from ._main import main as run_command

    # Loaded: from here on, the commands turn a Ctrl-C into exit 130 themselves.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    run_command()
