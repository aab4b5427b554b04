"""``jobworker list``: the jobs of the service, one line each."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from jobworker import JobInfo

from ._connection import Connection
from ._options import connection_options, json_option
from ._output import job_record, jobs_table, print_json, use_colour
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["list_jobs"]

EXAMPLES = """
\b
Examples:
  jobworker list
  jobworker list --all                     # every owner's jobs (admins)
  jobworker list --json | jq -r '.[] | select(.status.state == "running") | .id'
"""


@click.command(name="list", epilog=EXAMPLES, short_help="List your jobs.")
@click.option(
    "--all", "all_owners", is_flag=True, help="Every owner's jobs (admins only), with their owner."
)
@connection_options
@json_option
def list_jobs(all_owners: bool, connection: Connection, as_json: bool) -> None:
    """List your jobs on the service, oldest first: id, command, state, exit code or
    signal, stop type, OOM, start time, duration, CPU time, peak memory.  --json: an array
    of the objects status --json prints."""

    async def body(client: Client) -> list[JobInfo]:
        return await client.list(all_owners=all_owners)

    infos = call(connection, body)
    if as_json:
        print_json([job_record(info) for info in infos], sys.stdout)
    else:
        colour = use_colour(sys.stdout)
        click.echo(jobs_table(infos, colour=colour, owners=all_owners), nl=False, color=colour)
