"""The ``jobworker`` command: one group, its commands, and the one place errors end up.

Every command is a small module of this package, added to the group below.  Each keeps
its heavy imports (the worker, the service's client) inside its function, so that
``jobworker --help`` and a command's own path load only what that command uses; tests
check which modules stay out.

Every error ends here as one line on stderr, ``jobworker: <message>``, and an exit code
from the table in ``_exitcodes`` — never a traceback (``JOBWORKER_DEBUG=1`` shows one).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Sequence
from typing import NoReturn

import click

from ._certs import certs
from ._exitcodes import CliError, ExitCode, Interrupted, exit_code_for
from ._list import list_jobs
from ._logs import logs
from ._purge import purge
from ._run import run
from ._serve import serve
from ._start import start
from ._status import status
from ._stop import stop
from ._wait import wait

__all__ = ["cli", "main"]

# In the order --help lists them.
COMMANDS: list[click.Command] = [
    run,
    start,
    logs,
    status,
    list_jobs,
    wait,
    stop,
    purge,
    serve,
    certs,
]

EXAMPLES = """
\b
Examples:
  jobworker run -- sh -c 'echo out; echo err >&2'
  jobworker run --memory 256M --cpu 0.5 --pids 100 -- make -j4
  jobworker serve &                          # the service, on its local socket
  job=$(jobworker start -- sleep 60); jobworker logs -f "$job"
  jobworker run --help

\b
Shell completion (bash; for zsh and fish, say zsh_source or fish_source):
  eval "$(_JOBWORKER_COMPLETE=bash_source jobworker)"
"""


class _Commands(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return [c.name for c in COMMANDS if c.name is not None]


@click.group(
    cls=_Commands,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=EXAMPLES,
    invoke_without_command=True,
)
@click.version_option(package_name="jobworker", prog_name="jobworker")
@click.pass_context
def cli(ctx: click.Context) -> None:
    """Run Linux processes as jobs: their output live, their exit code, their limits."""
    if ctx.invoked_subcommand is None:
        click.echo(ctx.get_help())
        ctx.exit(ExitCode.USAGE)


for _command in COMMANDS:
    cli.add_command(_command)


def _say(message: str) -> None:
    # One line, whatever the message holds.
    click.echo(f"jobworker: {' '.join(message.split())}", err=True)


class _OneLine(logging.Formatter):
    """The library's log records as single lines: the exception's text, not its trace."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message = f"{message}: {record.exc_info[1]}"
        return " ".join(line.strip() for line in message.splitlines())


def _route_library_logs() -> None:
    handler = logging.StreamHandler()  # stderr
    handler.setFormatter(_OneLine())
    logger = logging.getLogger("jobworker")
    logger.addHandler(handler)
    logger.setLevel(logging.WARNING)
    logger.propagate = False


def _reserve_standard_fds() -> None:
    # Started with stdout (or stdin, stderr) closed, the next file opened would take its
    # number (a log, the connection to the service) and what is meant for stdout would
    # be written there: a job's output into its own log, read back and written again
    # without end, or into the service's socket.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # the lowest free number: this one


def _run(argv: Sequence[str] | None) -> int:
    _reserve_standard_fds()
    _route_library_logs()
    try:
        result = cli.main(args=argv, prog_name="jobworker", standalone_mode=False)
    except click.UsageError as e:
        where = e.ctx.command_path if e.ctx is not None else "jobworker"
        _say(f"{e.format_message()} (see '{where} --help')")
        return ExitCode.USAGE
    except click.ClickException as e:
        _say(e.format_message())
        return e.exit_code
    except (click.Abort, KeyboardInterrupt):
        return ExitCode.SIGNAL_BASE + signal.SIGINT
    except Interrupted:
        if sys.stderr.isatty():
            click.echo(err=True)  # the shell's prompt on a line of its own, after ^C
        return ExitCode.SIGNAL_BASE + signal.SIGINT
    except BrokenPipeError:
        # Whoever read our output has gone (`jobworker ... | head`): not an error to
        # report, and stdout must not be flushed again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return ExitCode.SIGNAL_BASE + signal.SIGPIPE
    except Exception as e:
        if os.environ.get("JOBWORKER_DEBUG"):
            raise
        code = exit_code_for(e)
        if isinstance(e, CliError) or code != ExitCode.FAILURE:
            _say(str(e))
        else:
            _say(f"unexpected error: {type(e).__name__}: {e}")
        return code
    return result if isinstance(result, int) else ExitCode.OK


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """The ``jobworker`` console script."""
    sys.exit(_run(argv))
