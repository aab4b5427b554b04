"""``jobworker serve``: the service, configured by flags and/or a TOML file.

Every key of the server's configuration file (``jobworker.server.load_config``) has a
flag; a flag overrides the file's value (``--admin`` and ``--owner`` replace and add to
the file's lists).  The server logs one JSON line per RPC on stderr.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import re
from pathlib import Path
from typing import Any

import click

from jobworker import Limits

from ._exitcodes import CliError, ExitCode
from ._limits import parse_size
from ._options import SECONDS, Parsed, limit_options

__all__ = [
    "parse_owner",
    "parse_retention_seconds",
    "parse_retention_size",
    "parse_uid_range",
    "serve",
]

EXAMPLES = """
\b
Examples:
  jobworker serve                                   # the local socket only
  jobworker serve --listen 0.0.0.0:7443 --tls-cert certs/server.pem \\
      --tls-key certs/server.key --client-ca certs/ca.pem
  jobworker serve --config /etc/jobworker/server.toml --max-running-jobs 20
  jobworker serve --default-memory 1G --default-pids 200 --owner ci=2000:2000
  jobworker serve --retention-max-age 604800 --retention-max-total 10G
"""

_OWNER = re.compile(
    r"(?P<name>[^=]+)=(?:(?P<root>root)|(?P<uid>\d+):(?P<gid>\d+)(?::(?P<groups>\d+(?:,\d+)*))?)"
)
_RANGE = re.compile(r"(\d+)-(\d+)")


def parse_owner(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=UID:GID[:G1,G2...]`` or ``NAME=root`` as (name, owner settings)."""
    m = _OWNER.fullmatch(text)
    if m is None:
        raise ValueError(f"{text!r} is not NAME=UID:GID[:GROUP,...] or NAME=root")
    if m["root"]:
        return m["name"], {"run_as": "root"}
    groups = tuple(int(g) for g in m["groups"].split(",")) if m["groups"] else ()
    return m["name"], {"uid": int(m["uid"]), "gid": int(m["gid"]), "groups": groups}


def parse_uid_range(text: str) -> tuple[int, int]:
    m = _RANGE.fullmatch(text.strip())
    if m is None:
        raise ValueError(f"{text!r} is not a range of uids LOW-HIGH (as in 61184-65519)")
    return int(m[1]), int(m[2])


# A retention rule turned off, as the config file says it.
OFF = "none"


def parse_retention_seconds(text: str) -> float | str:
    """Seconds >= 0, or ``none`` (the rule off)."""
    if text.strip().lower() == OFF:
        return OFF
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise ValueError(f"{text!r} is not a number of seconds >= 0, nor none")
    return value


def parse_retention_size(text: str) -> int | str:
    """A size (``10G``), ``auto`` or ``none``."""
    word = text.strip().lower()
    if word in (OFF, "auto"):
        return word
    return parse_size(text)


_PATH = click.Path(dir_okay=True, path_type=Path)
_AGE = Parsed("seconds", parse_retention_seconds)
_SIZE = Parsed("size", parse_retention_size)


@click.command(
    epilog=EXAMPLES, short_help="Run the service: gRPC on a local socket, and TCP with mutual TLS."
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    metavar="FILE.toml",
    help="The server's configuration file (README: the service); flags override it.",
)
@click.option(
    "--listen",
    metavar="HOST:PORT",
    help="Also serve TCP here, with mutual TLS only (needs --tls-cert, --tls-key, --client-ca).",
)
@click.option(
    "--socket",
    type=_PATH,
    metavar="PATH",
    help="The local Unix socket (default /run/jobworker/jobworker.sock for root, else"
    " $XDG_RUNTIME_DIR/jobworker/jobworker.sock).",
)
@click.option("--tls-cert", type=_PATH, metavar="FILE", help="The server's certificate (PEM).")
@click.option("--tls-key", type=_PATH, metavar="FILE", help="The server's private key (PEM).")
@click.option(
    "--client-ca",
    type=_PATH,
    metavar="FILE",
    help="The CA that signs client certificates (PEM); their Subject CN names the owner.",
)
@click.option(
    "--state-dir",
    type=_PATH,
    metavar="DIR",
    help="The server's state (default /var/lib/jobworker for root, else"
    " $XDG_STATE_HOME/jobworker); mode 0700.",
)
@click.option(
    "--log-dir",
    type=_PATH,
    metavar="DIR",
    help="The jobs' logs (default STATE_DIR/logs); mode 0700.",
)
@click.option(
    "--admin",
    "admins",
    multiple=True,
    metavar="NAME",
    help="An owner name with the admin role: sees and stops every job (repeatable;"
    " default: admin).",
)
@click.option(
    "--max-running-jobs",
    type=click.IntRange(min=1),
    metavar="N",
    help="Running jobs per owner, at most (default 100).",
)
@click.option(
    "--grace",
    type=SECONDS,
    metavar="SECONDS",
    help="SIGTERM to SIGKILL, for a stop that names none and at shutdown (default 10).",
)
@functools.partial(limit_options, prefix="default-", what=" A default for every job.")
@click.option(
    "--owner",
    "owners",
    type=Parsed("owner", parse_owner),
    multiple=True,
    metavar="NAME=UID:GID[:GROUPS]",
    help="Run NAME's jobs as this user and group, with these supplementary groups"
    " (1,2); NAME=root: as root (repeatable).",
)
@click.option(
    "--dynamic-uids",
    type=Parsed("range", parse_uid_range),
    metavar="LOW-HIGH",
    help="Uids for owners without --owner, one each, kept for good (default 61184-65519).",
)
@click.option(
    "--retention-max-age",
    type=_AGE,
    metavar="SECONDS",
    help="Logs of jobs that ended longer ago are removed (default 86400; none: kept).",
)
@click.option(
    "--retention-max-total",
    type=_SIZE,
    metavar="SIZE",
    help="Disk budget of the logs: past it, the oldest of ended jobs go (10G; default"
    " auto: a tenth of the disk, at most 4G; none: no budget).",
)
@click.option(
    "--retention-max-log-size",
    type=_SIZE,
    metavar="SIZE",
    help="A log keeps the first SIZE bytes of its job's output, and counts the rest as"
    " lost (default 1G; none: no cap).",
)
@click.option(
    "--retention-forget-after",
    type=_AGE,
    metavar="SECONDS",
    help="Jobs that ended longer ago are forgotten: unknown from then on (default 86400;"
    " none: never).",
)
@click.option(
    "--retention-interval",
    type=SECONDS,
    metavar="SECONDS",
    help="Time between two purges on the timer (default 60).",
)
@click.option(
    "--allow-shared-user/--no-allow-shared-user",
    default=None,
    help="A server that is not root: serve TCP owners although their jobs run as the"
    " server's own user.",
)
def serve(
    config_file: Path | None,
    default_limits: Limits,
    admins: tuple[str, ...],
    owners: tuple[tuple[str, dict[str, Any]], ...],
    **flags: Any,
) -> int:
    """Run the jobworker service until SIGTERM or Ctrl-C: its local Unix socket (mode
    0600; the caller is this user, an admin; no certificates), and with --listen TCP with
    mutual TLS 1.3 (a client certificate signed by --client-ca; its Subject CN names the
    owner).  On SIGTERM or Ctrl-C it stops every job (SIGTERM, SIGKILL after the grace),
    removes its socket and exits 0.  One JSON line per RPC on stderr.
    """
    from jobworker.server import OwnerConfig, load_config

    config = load_config(config_file)
    retention = {
        name.removeprefix("retention_"): flags.pop(name)
        for name in list(flags)
        if name.startswith("retention_")
    }
    changes = {name: value for name, value in flags.items() if value is not None}
    given_retention: dict[str, Any] = {
        k: None if v == OFF else v for k, v in retention.items() if v is not None
    }
    if given_retention:
        changes["retention"] = dataclasses.replace(config.retention, **given_retention)
    if admins:
        changes["admins"] = admins
    if owners:
        changes["owners"] = {
            **config.owners,
            **{name: OwnerConfig(**spec) for name, spec in owners},
        }
    given = {
        f.name: getattr(default_limits, f.name)
        for f in dataclasses.fields(Limits)
        if getattr(default_limits, f.name) is not None
    }
    if given:
        changes["default_limits"] = dataclasses.replace(config.default_limits, **given)
    config = dataclasses.replace(config, **changes)
    # The server and the worker load only once the configuration is known to be good.
    from jobworker.server import run

    # The server's own lines (one a call) are information, not warnings.
    logging.getLogger("jobworker").setLevel(logging.INFO)
    try:
        return run(config)
    except OSError as e:
        raise CliError(f"cannot serve: {e.strerror or e}", ExitCode.FAILURE) from e
