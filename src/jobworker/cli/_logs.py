"""``jobworker logs``: a job's output from the service, bytes untouched; ``-f`` follows it
live until it ends, resuming after a dropped connection."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import click

from ._connection import Connection
from ._options import connection_options, job_id_argument
from ._remote import call

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["RETRIES", "copy_output", "logs"]

# A dropped connection is retried this many times in a row (0.1 s apart, doubling, at
# most 5 s: about half a minute) before ``-f`` gives up.
RETRIES = 10

EXAMPLES = """
\b
Examples:
  jobworker logs "$job"                  # what it has written so far
  jobworker logs -f "$job"               # and on, live, until it ends
  jobworker logs -f "$job" | grep -m1 ready
"""


async def copy_output(client: Client, job: uuid.UUID, *, follow: bool) -> None:
    """Copy the job's output to stdout: with ``follow``, live until the job has ended,
    resuming from the byte after the last one written if the connection drops; else
    what its log holds now.  A write to stdout runs in a thread, so that the event loop
    still answers a signal while a slow reader holds it up."""
    import asyncio

    from ._output import STDOUT, write_all

    if follow:
        # At once, and before any retry: an unknown job or a service that is not there.
        await client.query(job)
        chunks = client.follow(job, retries=RETRIES)
    else:
        chunks = client.stream(job, follow=False)
    async for chunk in chunks:
        await asyncio.to_thread(write_all, STDOUT, chunk)


@click.command(epilog=EXAMPLES, short_help="Print a job's output; -f follows it live.")
@click.option(
    "--follow",
    "-f",
    is_flag=True,
    help="Follow the output live until the job ends (resuming after a dropped connection).",
)
@connection_options
@job_id_argument
def logs(follow: bool, connection: Connection, job: uuid.UUID) -> None:
    """Print the output of job ID (stdout and stderr, interleaved as it wrote them) as
    it is, byte for byte: what it has written so far, or with -f everything, live, until
    it ends.  If the connection to the service drops, -f reconnects and goes on from the
    byte after the last one it printed: nothing missed, nothing twice."""

    async def body(client: Client) -> None:
        await copy_output(client, job, follow=follow)

    call(connection, body)
