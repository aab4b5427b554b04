"""``jobworker wait``: wait for a job of the service to end; exit as it did."""

from __future__ import annotations

import sys
import uuid
from typing import TYPE_CHECKING

import click

from jobworker import JobInfo

from ._connection import Connection
from ._exitcodes import status_exit_code
from ._options import connection_options, job_id_argument, json_option
from ._output import job_record, oom_message, print_json
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["wait"]

EXAMPLES = """
\b
Examples:
  jobworker wait "$job" && echo "it worked"
  jobworker wait --json "$job" > status.json     # exits as the job did, all the same
"""


@click.command(epilog=EXAMPLES, short_help="Wait for a job to end; exit with its exit code.")
@connection_options
@json_option
@job_id_argument
def wait(connection: Connection, as_json: bool, job: uuid.UUID) -> int:
    """Wait until job ID has ended, then exit with its exit code, as a shell would: its
    own code, 128+N if it died of signal N (137 for SIGKILL and the OOM killer, 143 for
    a stop within its grace).  Ctrl-C stops the waiting, not the job."""

    async def body(client: Client) -> JobInfo:
        return await client.wait(job)

    info = call(connection, body)
    if as_json:
        print_json(job_record(info), sys.stdout)
    elif info.status.oom_killed:
        click.echo(f"jobworker: {oom_message(info)}", err=True)
    return status_exit_code(info.status)
