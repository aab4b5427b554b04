"""``jobworker certs``: a CA, a server certificate and client certificates, in one step."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ._exitcodes import CliError, ExitCode
from ._options import json_option

__all__ = ["certs"]

EXAMPLES = """
\b
Examples:
  jobworker certs certs --user alice --user bob --admin admin --host jobs.example
  jobworker certs certs --user carol      # later: carol's, by the same CA
"""


@click.command(epilog=EXAMPLES, short_help="Make a CA, server and client certificates.")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path), metavar="DIR")
@click.option(
    "--user", "users", multiple=True, metavar="NAME", help="A client certificate for NAME."
)
@click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="NAME",
    help="A client certificate for NAME, an admin (default: one for admin).",
)
@click.option(
    "--host",
    "hosts",
    multiple=True,
    metavar="NAME",
    help="A name or address of the server, besides localhost, 127.0.0.1 and ::1.",
)
@click.option(
    "--days",
    type=click.IntRange(min=1),
    default=365,
    show_default=True,
    metavar="N",
    help="How long the certificates are valid.",
)
@json_option
def certs(
    directory: Path,
    users: tuple[str, ...],
    admins: tuple[str, ...],
    hosts: tuple[str, ...],
    days: int,
    as_json: bool,
) -> None:
    """Make what is missing in DIR (created, mode 0700): a CA (ca.pem, ca.key), a server
    certificate for localhost, 127.0.0.1, ::1 and each --host (server.pem, server.key),
    and a client certificate for each --user and --admin (NAME.pem, NAME.key).  ECDSA
    P-256; private keys mode 0600.  Files already there are kept, never overwritten: run
    it again to add users, signed by the same CA.  Prints the files it wrote.

    The server takes ca.pem as --client-ca; a client takes ca.pem, NAME.pem and NAME.key
    as --ca, --cert and --key.  Admins are named in the server's config (--admin); the
    default, admin, is the default here too.
    """
    from jobworker.server import make_certs

    try:
        written = make_certs(
            directory,
            users=users,
            admins=admins or ("admin",),
            server_names=hosts,
            days=days,
        )
    except ValueError as e:
        raise CliError(str(e), ExitCode.USAGE) from e
    except OSError as e:
        where = f" {e.filename}" if e.filename else ""
        raise CliError(f"cannot write certificates{where}: {e.strerror or e}") from e
    if as_json:
        from ._output import print_json

        print_json({"directory": str(directory), "written": [str(p) for p in written]}, sys.stdout)
    else:
        for path in written:
            click.echo(str(path))
