"""``jobworker purge``: apply the service's retention policy now (admins only)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from ._connection import Connection
from ._limits import format_size
from ._options import connection_options, json_option
from ._output import print_json
from ._remote import call

if TYPE_CHECKING:
    from jobworker import PurgeResult
    from jobworker.client import Client

__all__ = ["purge"]

EXAMPLES = """
\b
Examples:
  jobworker purge                  # on the local socket: the service's own user, an admin
  jobworker purge --json | jq .freed_bytes
"""


@click.command(epilog=EXAMPLES, short_help="Remove old logs and forget old jobs now (admins).")
@connection_options
@json_option
def purge(connection: Connection, as_json: bool) -> None:
    """Apply the service's retention policy now, as its timer does: remove the logs of
    ended jobs that are too old or over its disk budget (oldest first), and forget the
    jobs that ended long enough ago (they answer as unknown jobs from then on).  Prints
    one line per log removed (size, why, path), then what they freed and how many jobs
    were forgotten.  For admins only: anyone else gets exit 77.
    """

    async def body(client: Client) -> PurgeResult:
        return await client.purge()

    result = call(connection, body)
    if as_json:
        print_json(
            {
                "removed": [
                    {
                        "job_id": str(p.job_id),
                        "path": str(p.path),
                        "size": p.size,
                        "reason": p.reason,
                    }
                    for p in result.removed
                ],
                "freed_bytes": result.freed,
                "forgotten": [str(j) for j in result.forgotten],
            },
            sys.stdout,
        )
        return
    for p in result.removed:
        click.echo(f"{format_size(p.size):>6}  {p.reason:<6}  {p.path}")
    logs, jobs = len(result.removed), len(result.forgotten)
    click.echo(
        f"removed {logs} log{'' if logs == 1 else 's'} ({format_size(result.freed)} freed),"
        f" forgot {jobs} job{'' if jobs == 1 else 's'}"
    )
