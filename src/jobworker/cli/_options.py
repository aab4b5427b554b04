"""Options shared by several commands, each declared once.

- ``limit_options``: ``--cpu --memory --io-read --io-write --io-path --pids``, handed to
  the command as one ``limits: Limits`` (``run``, ``start``).
- ``connection_options``: ``--server --ca --cert --key --config``, handed to the command
  as one ``connection: Connection`` (every command that talks to the service).
- ``grace_option``: ``--grace SECONDS`` (``run``, ``stop``).
- ``json_option``: ``--json`` (every command that prints data).

Each group wraps the command's callback and turns its flags into one value, so a command
module sees the library's types, not flag spellings.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from jobworker import Limits

from . import _limits
from ._connection import parse_address, resolve_connection

__all__ = ["connection_options", "grace_option", "json_option", "limit_options"]

F = TypeVar("F", bound=Callable[..., Any])


if TYPE_CHECKING:
    _ParamType = click.ParamType[Any]  # generic in newer click only
else:
    _ParamType = click.ParamType


class _Parsed(_ParamType):
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


SIZE = _Parsed("size", _limits.parse_size)
RATE = _Parsed("rate", _limits.parse_rate)
CPU = _Parsed("cores", _limits.parse_cpu)
PIDS = _Parsed("count", _limits.parse_pids)


def _parse_grace(text: str) -> float:
    try:
        value = float(text)  # "inf" is allowed: SIGTERM only, never SIGKILL
    except ValueError:
        value = math.nan
    if math.isnan(value) or value < 0:
        raise ValueError(f"{text!r} is not a number of seconds >= 0 (inf: never SIGKILL)")
    return value


SECONDS = _Parsed("seconds", _parse_grace)


def limit_options(f: F) -> F:
    @functools.wraps(f)
    def wrapper(
        *args: Any,
        cpu: float | None,
        memory: int | None,
        io_read: int | None,
        io_write: int | None,
        io_path: str | None,
        pids: int | None,
        **kwargs: Any,
    ) -> Any:
        kwargs["limits"] = Limits(
            cpu=cpu,
            memory=memory,
            io_read_bps=io_read,
            io_write_bps=io_write,
            io_path=io_path,
            pids=pids,
        )
        return f(*args, **kwargs)

    options = [
        click.option(
            "--cpu", type=CPU, metavar="CORES", help="CPU time in cores (0.5: half a core)."
        ),
        click.option(
            "--memory",
            type=SIZE,
            metavar="SIZE",
            help="Memory limit (256M, 1G; binary units); past it the job is OOM-killed.",
        ),
        click.option(
            "--io-read",
            type=RATE,
            metavar="RATE",
            help="Disk read limit, bytes per second (10M), on the disk of --io-path.",
        ),
        click.option(
            "--io-write",
            type=RATE,
            metavar="RATE",
            help="Disk write limit, bytes per second (10M), on the disk of --io-path.",
        ),
        click.option(
            "--io-path",
            type=click.Path(exists=True, resolve_path=True),
            metavar="PATH",
            help="A path on the disk that --io-read and --io-write throttle"
            " (run: default the current directory).",
        ),
        click.option(
            "--pids",
            type=PIDS,
            metavar="N",
            help="Maximum number of tasks (processes and threads).",
        ),
    ]
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def connection_options(f: F) -> F:
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
            help="The service to use: HOST:PORT (mutual TLS) or unix:PATH."
            " Default: the local service's socket.",
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
    decorated: Any = wrapper
    for option in reversed(options):
        decorated = option(decorated)
    return decorated  # type: ignore[no-any-return]


def grace_option(f: F) -> F:
    return click.option(
        "--grace",
        type=SECONDS,
        metavar="SECONDS",
        help="On a stop, time between SIGTERM and SIGKILL (default 10; 0: SIGKILL at once;"
        " inf: never SIGKILL).",
    )(f)


def json_option(f: F, help: str = "Print JSON (its shape: docs/CLI.md).") -> F:
    return click.option("--json", "as_json", is_flag=True, help=help)(f)
