"""``jobworker start``: start a job on the service and print its id."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import click

from jobworker import Command, JobInfo, Limits

from ._connection import Connection
from ._options import command_options, connection_options, json_option, limit_options
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["start"]

EXAMPLES = """
\b
Examples:
  jobworker start -- make -j4                     # prints the job's id
  job=$(jobworker start --memory 256M --cpu 0.5 -- ./train.sh)
  jobworker start --env LEVEL=debug --cwd /srv/app -- ./serve.sh
  jobworker start --json -- sleep 60              # the job's status as JSON
"""


@click.command(
    context_settings={"allow_interspersed_args": False},
    epilog=EXAMPLES,
    short_help="Start a job on the service; print its id.",
)
@limit_options
@command_options
@connection_options
@json_option
@click.argument(
    "command", nargs=-1, required=True, type=click.UNPROCESSED, metavar="-- CMD [ARGS]..."
)
def start(
    limits: Limits,
    env: dict[str, str] | None,
    cwd: str | None,
    connection: Connection,
    as_json: bool,
    command: tuple[str, ...],
) -> None:
    """Start CMD as a job of yours on the service and print its id; the job runs on
    until it ends or is stopped (see logs, status, wait, stop).

    The job runs on the service's machine, as the user the service runs your jobs as,
    from a minimal environment (PATH, LANG, HOME) plus --env, in --cwd or that user's
    home directory; its stdin is /dev/null.  --io-path is a path on the service's
    machine.
    """
    job_command = Command(command[0], command[1:], env=env, cwd=cwd)

    async def body(client: Client) -> tuple[uuid.UUID, JobInfo | None]:
        job = await client.start(job_command, limits)
        return job, (await client.query(job) if as_json else None)

    job, info = call(connection, body)
    if info is not None:
        from ._output import job_record, print_json

        print_json(job_record(info), sys.stdout)
    else:
        click.echo(str(job))
