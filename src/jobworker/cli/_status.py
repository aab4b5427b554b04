"""``jobworker status``: one job of the service, in detail."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import click

from jobworker import JobInfo

from ._connection import Connection
from ._options import connection_options, job_id_argument, json_option
from ._output import job_details, job_record, print_json, use_colour
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["status"]

EXAMPLES = """
\b
Examples:
  jobworker status 0b8e2f8c-5d3a-4d8e-9f44-1f2b3c4d5e6f
  jobworker status --json "$job" | jq -r .status.state
"""


@click.command(epilog=EXAMPLES, short_help="Show a job's status, times, usage and limits.")
@connection_options
@json_option
@job_id_argument
def status(connection: Connection, as_json: bool, job: uuid.UUID) -> None:
    """Show job ID: its state, exit code or signal, stop type, whether the OOM killer
    ended it, pid, command, start and end times, duration, CPU time, peak memory, limits,
    the user it runs as and its log on the service's machine."""

    async def body(client: Client) -> JobInfo:
        return await client.query(job)

    info = call(connection, body)
    if as_json:
        print_json(job_record(info), sys.stdout)
    else:
        colour = use_colour(sys.stdout)
        click.echo(job_details(info, colour=colour), nl=False, color=colour)
