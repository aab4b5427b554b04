"""Options shared by several commands, each declared once.

- ``limit_options``: ``--cpu --memory --io-read --io-write --io-path --pids``, handed to
  the command as one ``limits: Limits`` (``run``, ``start``; ``serve`` has them as
  ``--default-*``).
- ``command_options``: ``--env NAME=VALUE --cwd DIR``, handed to the command as ``env``
  and ``cwd`` (``run``, ``start``).
- ``connection_options``: ``--server --ca --cert --key --config``, handed to the command
  as one ``connection: Connection`` (every command that talks to the service);
  ``run_connection_options`` the same for ``run``, whose ``connection`` is None (run here)
  unless a server is named.
- ``job_id_argument``: ``ID``, a job's UUID, handed to the command as ``job: uuid.UUID``.
- ``grace_option``: ``--grace SECONDS`` (``run``, ``stop``).
- ``json_option``: ``--json`` (every command that prints data).

Each group wraps the command's callback and turns its flags into one value, so a command
module sees the library's types, not flag spellings.
"""

from __future__ import annotations

import functools
import math
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from jobworker import Limits

from . import _limits
from ._connection import Connection, parse_address, resolve_connection

__all__ = [
    "SECONDS",
    "Parsed",
    "command_options",
    "connection_options",
    "grace_option",
    "job_id_argument",
    "json_option",
    "limit_options",
    "parse_env",
    "run_connection_options",
]

F = TypeVar("F", bound=Callable[..., Any])


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic in newer click only
else:
    _ParamType = click.ParamType


class Parsed(_ParamType):
    """A click type over one of the parsers in ``_limits``: their ValueError, one line."""

    def __init__(self, name: str, parse: Callable[[str], Any]) -> None:
        self.name = name
        self._parse = parse

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, already converted
        try:
            return self._parse(value)
        except ValueError as e:
            self.fail(str(e), param, ctx)


SIZE = Parsed("size", _limits.parse_size)
RATE = Parsed("rate", _limits.parse_rate)
CPU = Parsed("cores", _limits.parse_cpu)
PIDS = Parsed("count", _limits.parse_pids)


def _parse_grace(text: str) -> float:
    try:
        value = float(text)  # "inf" is allowed: SIGTERM only, never SIGKILL
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ValueError(f"{text!r} is not a number of seconds >= 0 (inf: never SIGKILL)")
    return value


SECONDS = Parsed("seconds", _parse_grace)


def _job_id(text: str) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError:
        raise ValueError(f"{text!r} is not a job id (a UUID, as start and list print it)") from None


JOB_ID = Parsed("job id", _job_id)


def parse_env(text: str) -> tuple[str, str]:
    """``NAME=VALUE`` as (name, value); the value may be empty, the name may not."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise ValueError(f"{text!r} is not NAME=VALUE")
    return name, value


ENV = Parsed("NAME=VALUE", parse_env)


def _decorate(f: Any, options: list[Callable[[Any], Any]]) -> Any:
    for option in reversed(options):
        f = option(f)
    return f


def limit_options(f: F, *, prefix: str = "", what: str = "") -> F:
    """``prefix``: ``default-`` for the server's defaults (``serve``), whose flags then
    reach the command as ``default_limits``; ``what``: added to each flag's help."""
    key = f"{prefix.replace('-', '_')}limits" if prefix else "limits"
    names = ("cpu", "memory", "io_read", "io_write", "io_path", "pids")

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(prefix.replace("-", "_") + name) for name in names}
        kwargs[key] = Limits(
            cpu=values["cpu"],
            memory=values["memory"],
            io_read_bps=values["io_read"],
            io_write_bps=values["io_write"],
            io_path=values["io_path"],
            pids=values["pids"],
        )
        return f(*args, **kwargs)

    options = [
        click.option(
            f"--{prefix}cpu",
            type=CPU,
            metavar="CORES",
            help=f"CPU time in cores (0.5: half a core).{what}",
        ),
        click.option(
            f"--{prefix}memory",
            type=SIZE,
            metavar="SIZE",
            help=f"Memory limit (256M, 1G; binary units); past it the job is OOM-killed.{what}",
        ),
        click.option(
            f"--{prefix}io-read",
            type=RATE,
            metavar="RATE",
            help=f"Disk read limit, bytes per second (10M), on the disk of"
            f" --{prefix}io-path.{what}",
        ),
        click.option(
            f"--{prefix}io-write",
            type=RATE,
            metavar="RATE",
            help=f"Disk write limit, bytes per second (10M), on the disk of"
            f" --{prefix}io-path.{what}",
        ),
        click.option(
            f"--{prefix}io-path",
            metavar="PATH",
            help="A path on the disk that the io limits throttle"
            + (
                ""
                if prefix
                else " (on the service's machine; run without --server: default the current"
                " directory)"
            )
            + f".{what}",
        ),
        click.option(
            f"--{prefix}pids",
            type=PIDS,
            metavar="N",
            help=f"Maximum number of tasks (processes and threads).{what}",
        ),
    ]
    return _decorate(wrapper, options)  # type: ignore[no-any-return]


def command_options(f: F) -> F:
    @functools.wraps(f)
    def wrapper(
        *args: Any, env: tuple[tuple[str, str], ...], cwd: str | None, **kwargs: Any
    ) -> Any:
        kwargs["env"] = dict(env) or None
        kwargs["cwd"] = cwd
        return f(*args, **kwargs)

    options = [
        click.option(
            "--env",
            "-e",
            type=ENV,
            multiple=True,
            metavar="NAME=VALUE",
            help="Set a variable in the job's environment (repeatable). Through the service a"
            " job starts from a minimal environment (PATH, LANG, HOME); here, from jobworker's.",
        ),
        click.option(
            "--cwd",
            metavar="DIR",
            help="The job's working directory (default: jobworker's here; through the service,"
            " the home directory of the user the job runs as).",
        ),
    ]
    return _decorate(wrapper, options)  # type: ignore[no-any-return]


def job_id_argument(f: F) -> F:
    return click.argument("job", type=JOB_ID, metavar="ID")(f)


def connection_options(f: F) -> F:
    """Connection settings for a command of the service: flags, environment, config file;
    the local service's socket when none names a server."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        server: str | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        config: str | None,
        **kwargs: Any,
    ) -> Any:
        kwargs["connection"] = resolve_connection(server, ca, cert, key, config)
        return f(*args, **kwargs)

    return _connection_flags(  # type: ignore[no-any-return]
        wrapper,
        server_help="The service to use: HOST:PORT (mutual TLS)"
        " or unix:PATH. Default: the config file's, else the local service's socket.",
    )


def run_connection_options(f: F) -> F:
    """``run``'s: in this process (``connection`` None) unless ``--server`` (or
    JOBWORKER_SERVER) names a service; the config file then fills in the rest, but never
    sends ``run`` to a service by itself."""

    @functools.wraps(f)
    def wrapper(
        *args: Any,
        server: str | None,
        ca: str | None,
        cert: str | None,
        key: str | None,
        config: str | None,
        **kwargs: Any,
    ) -> Any:
        connection: Connection | None = None
        if server is not None:
            connection = resolve_connection(server, ca, cert, key, config)
        kwargs["connection"] = connection
        return f(*args, **kwargs)

    return _connection_flags(  # type: ignore[no-any-return]
        wrapper,
        server_help="Run the job on this service instead of in"
        " this process: HOST:PORT (mutual TLS) or unix:PATH.",
    )


def _connection_flags(wrapper: Any, server_help: str) -> Any:

    def check_address(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_address(value)
            except ValueError as e:
                raise click.BadParameter(str(e), ctx, param) from None
        return value

    options = [
        click.option(
            "--server",
            metavar="HOST:PORT",
            envvar="JOBWORKER_SERVER",
            show_envvar=True,
            callback=check_address,
            help=server_help,
        ),
        click.option(
            "--ca",
            metavar="FILE",
            envvar="JOBWORKER_CA",
            show_envvar=True,
            help="CA certificate that signed the server's certificate (PEM).",
        ),
        click.option(
            "--cert",
            metavar="FILE",
            envvar="JOBWORKER_CERT",
            show_envvar=True,
            help="Your client certificate (PEM).",
        ),
        click.option(
            "--key",
            metavar="FILE",
            envvar="JOBWORKER_KEY",
            show_envvar=True,
            help="The private key of your client certificate (PEM).",
        ),
        click.option(
            "--config",
            metavar="FILE",
            envvar="JOBWORKER_CONFIG",
            show_envvar=True,
            help="Config file with server, ca, cert and key."
            " Default: ~/.config/jobworker/config.toml if it exists.",
        ),
    ]
    return _decorate(wrapper, options)


def grace_option(f: F) -> F:
    return click.option(
        "--grace",
        type=SECONDS,
        metavar="SECONDS",
        help="On a stop, time between SIGTERM and SIGKILL (default 10 here, the service's"
        " own through a service; 0: SIGKILL at once; inf: never SIGKILL).",
    )(f)


def json_option(f: F, help: str = "Print JSON (its shape: docs/CLI.md).") -> F:
    return click.option("--json", "as_json", is_flag=True, help=help)(f)
