"""``jobworker stop``: stop a job of the service (SIGTERM, then SIGKILL after the grace)."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import click

from jobworker import JobInfo

from ._connection import Connection
from ._options import connection_options, grace_option, job_id_argument, json_option
from ._output import job_record, print_json, status_text
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["stop"]

EXAMPLES = """
\b
Examples:
  jobworker stop 0b8e2f8c-5d3a-4d8e-9f44-1f2b3c4d5e6f      # prints: stopped (TERM)
  jobworker stop --grace 0 "$job"                           # SIGKILL at once
  jobworker stop --json "$job"                              # its final status as JSON
"""


@click.command(epilog=EXAMPLES, short_help="Stop a job: SIGTERM, then SIGKILL after the grace.")
@grace_option
@connection_options
@json_option
@job_id_argument
def stop(grace: float | None, connection: Connection, as_json: bool, job: uuid.UUID) -> None:
    """Stop job ID: SIGTERM to its process group, SIGKILL to all that is left of it
    after --grace seconds (default: the service's).  Returns once the job has ended, and
    prints how it ended: stopped (TERM) within the grace, stopped (KILL) after it, or its
    own exit if it ended by itself meanwhile.  A job that had already ended: exit 4.
    """

    async def body(client: Client) -> JobInfo:
        return await client.stop(job, grace)

    info = call(connection, body)
    if as_json:
        print_json(job_record(info), sys.stdout)
    else:
        click.echo(status_text(info.status))
