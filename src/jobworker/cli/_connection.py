"""Where the service is and how to prove who we are: ``--server``, ``--ca``, ``--cert``,
``--key``.

Each setting comes from the first of: its flag, its ``JOBWORKER_*`` environment variable
(``JOBWORKER_SERVER``, ``JOBWORKER_CA``, ``JOBWORKER_CERT``, ``JOBWORKER_KEY``), the
config file, or the default.  The config file is ``--config FILE`` (or
``JOBWORKER_CONFIG``), else ``$XDG_CONFIG_HOME/jobworker/config.toml`` if it exists
(``~/.config/...`` without XDG_CONFIG_HOME): a TOML file of top-level ``server``,
``ca``, ``cert`` and ``key`` strings, paths relative to the file's own directory.

``--server`` is ``HOST:PORT`` (``[::1]:PORT`` for an IPv6 address) or ``unix:PATH``.
Without it, commands go to the local service on its Unix socket, which needs no
certificates.  TCP is always mutual TLS, so a TCP server needs all three of ``ca``,
``cert`` and ``key``; they are ignored for a Unix socket.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ._exitcodes import CliError, ExitCode

__all__ = [
    "CONFIG_KEYS",
    "Connection",
    "TcpAddress",
    "UnixAddress",
    "default_config_path",
    "parse_address",
    "resolve_connection",
]

CONFIG_KEYS = ("server", "ca", "cert", "key")


@dataclass(frozen=True)
class TcpAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UnixAddress:
    path: Path

    def __str__(self) -> str:
        return f"unix:{self.path}"


@dataclass(frozen=True)
class Connection:
    """``address`` None: the local service's own socket.  The three paths are set
    together, and only for a TCP address."""

    address: TcpAddress | UnixAddress | None = None
    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None


def parse_address(text: str) -> TcpAddress | UnixAddress:
    """``HOST:PORT``, ``[V6]:PORT`` or ``unix:PATH``; ValueError saying why not."""
    if text.startswith("unix:"):
        path = text.removeprefix("unix:")
        if not path:
            raise ValueError(f"{text!r} names no socket (write unix:/path/to/socket)")
        return UnixAddress(Path(path).expanduser())
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: write an IPv6 address in brackets, as in [::1]:7443")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT (a port from 1 to 65535) or unix:PATH")
    return TcpAddress(host, int(port))


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base, "jobworker", "config.toml")


def _read_config(path: Path) -> dict[str, str]:
    import tomllib  # only when there is a file to read

    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise CliError(f"cannot read config file {path}: {e.strerror}", ExitCode.USAGE) from e
    except tomllib.TOMLDecodeError as e:
        raise CliError(f"config file {path}: {e}", ExitCode.USAGE) from e
    unknown = sorted(set(data) - set(CONFIG_KEYS))
    if unknown:
        raise CliError(
            f"config file {path}: unknown setting {unknown[0]!r} (known: {', '.join(CONFIG_KEYS)})",
            ExitCode.USAGE,
        )
    for key, value in data.items():
        if not isinstance(value, str):
            raise CliError(f"config file {path}: {key} must be a string", ExitCode.USAGE)
    return {
        key: value if key == "server" else str(path.parent / Path(value).expanduser())
        for key, value in data.items()
    }


def resolve_connection(
    server: str | None,
    ca: str | None,
    cert: str | None,
    key: str | None,
    config: str | None,
) -> Connection:
    """Combine flags (and environment, which click folds into them) with the config
    file; check what can be checked before connecting."""
    settings = {"server": server, "ca": ca, "cert": cert, "key": key}
    if config is not None:
        from_file = _read_config(Path(config).expanduser())
    else:
        default = default_config_path()
        from_file = _read_config(default) if default.is_file() else {}
    for name, value in from_file.items():
        if settings[name] is None:
            settings[name] = value
    if settings["server"] is None:
        return Connection()
    try:
        address = parse_address(settings["server"])
    except ValueError as e:
        raise CliError(f"invalid server address: {e}", ExitCode.USAGE) from None
    if isinstance(address, UnixAddress):
        return Connection(address)
    missing = [f"--{name}" for name in ("ca", "cert", "key") if settings[name] is None]
    if missing:
        raise CliError(
            f"--server {address} needs {', '.join(missing)}: TCP is always mutual TLS"
            " (or use the local service: no --server)",
            ExitCode.USAGE,
        )
    paths = {}
    for name in ("ca", "cert", "key"):
        path = Path(str(settings[name])).expanduser()
        if not path.is_file():
            raise CliError(f"--{name} {path}: no such file", ExitCode.USAGE)
        paths[name] = path
    return Connection(address, paths["ca"], paths["cert"], paths["key"])
