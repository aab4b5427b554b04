"""The server's configuration: one frozen dataclass, loadable from a TOML file.

Every key of the file is a field of ``ServerConfig`` (tables for the nested ones); an
unknown key is an error, so that a typo never silently leaves a default in force.  The
command line builds on ``load_config`` and overrides fields with ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobworker import InvalidArgument, JobworkerError, Limits, Retention

from .. import _wire
from ._paths import default_log_dir, default_socket_path, default_state_dir

__all__ = [
    "ConfigError",
    "OwnerConfig",
    "ServerConfig",
    "load_config",
    "parse_address",
    "retention_from_mapping",
]


class ConfigError(JobworkerError, ValueError):
    """The configuration is malformed, or asks for something unsafe."""


@dataclass(frozen=True)
class OwnerConfig:
    """How one owner's jobs run: as ``uid``/``gid`` (supplementary groups ``groups``), or,
    only where the admin writes ``run_as = "root"``, as root."""

    uid: int | None = None
    gid: int | None = None
    groups: tuple[int, ...] = ()
    run_as: str | None = None


@dataclass(frozen=True)
class ServerConfig:
    """Everything ``serve`` needs.  Paths left ``None`` take the defaults of
    ``jobworker.server`` (``default_socket_path()`` and friends)."""

    # "HOST:PORT" to serve over TCP as well, with mutual TLS only; None: local socket only.
    listen: str | None = None
    socket: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None
    state_dir: Path | None = None
    log_dir: Path | None = None
    # Certificate CNs with the admin role: they see and stop every owner's jobs.
    admins: tuple[str, ...] = ("admin",)
    # Per owner; RESOURCE_EXHAUSTED past it.
    max_running_jobs: int = 100
    # For every field a request leaves unset.
    default_limits: Limits = field(default_factory=Limits)
    # SIGTERM to SIGKILL, for Stop without a grace and for the jobs stopped at shutdown.
    grace: float = 10.0
    # Run-as: explicit owners, then uids from this range (inclusive), allocated for good.
    owners: Mapping[str, OwnerConfig] = field(default_factory=dict)
    dynamic_uids: tuple[int, int] = (61184, 65519)
    # A server that is not root cannot give TCP owners users of their own: it refuses to
    # serve TCP unless this says their jobs may run as the server's own user.
    allow_shared_user: bool = False
    # How long logs and ended jobs are kept, and how large a log grows (the library's
    # defaults: a day, a tenth of the disk up to 4 GiB, 1 GiB a log).
    retention: Retention = field(default_factory=Retention)

    def __post_init__(self) -> None:
        for name in ("socket", "tls_cert", "tls_key", "client_ca", "state_dir", "log_dir"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "admins", tuple(self.admins))
        object.__setattr__(self, "owners", dict(self.owners))
        object.__setattr__(self, "dynamic_uids", tuple(self.dynamic_uids))
        self.check()

    def check(self) -> None:
        if self.listen is not None:
            parse_address(self.listen)
            missing = [n for n in ("tls_cert", "tls_key", "client_ca") if getattr(self, n) is None]
            if missing:
                raise ConfigError(
                    f"listening on {self.listen} needs mutual TLS: set {', '.join(missing)}"
                    " (TCP without client certificates is not offered)"
                )
        if (
            isinstance(self.max_running_jobs, bool)
            or not isinstance(self.max_running_jobs, int)
            or self.max_running_jobs < 1
        ):
            raise ConfigError(
                f"max_running_jobs must be an integer >= 1, not {self.max_running_jobs!r}"
            )
        if not isinstance(self.grace, int | float) or not (0 <= self.grace < math.inf):
            raise ConfigError(f"grace must be a finite number of seconds >= 0, not {self.grace!r}")
        if not isinstance(self.retention, Retention):
            raise ConfigError(f"retention must be a jobworker.Retention, not {self.retention!r}")
        if not all(isinstance(a, str) and a for a in self.admins):
            raise ConfigError(f"admins must be a list of names, not {self.admins!r}")
        low, high = self.dynamic_uids
        if not (isinstance(low, int) and isinstance(high, int) and 0 < low <= high < 2**31):
            raise ConfigError(
                f"dynamic_uids must be [low, high] with 0 < low <= high, not {[low, high]}"
            )
        for name, owner in self.owners.items():
            if owner.run_as is not None:
                if owner.run_as != "root" or owner.uid is not None or owner.gid is not None:
                    raise ConfigError(
                        f'owners.{name}: run_as can only be "root", and not together with uid/gid'
                    )
            elif owner.uid is None or owner.gid is None:
                raise ConfigError(f'owners.{name}: set uid and gid (or run_as = "root")')
            elif owner.uid < 0 or owner.gid < 0:
                raise ConfigError(f"owners.{name}: uid and gid must be >= 0")

    @property
    def socket_path(self) -> Path:
        return self.socket if self.socket is not None else default_socket_path()

    @property
    def state_path(self) -> Path:
        return self.state_dir if self.state_dir is not None else default_state_dir()

    @property
    def log_path(self) -> Path:
        if self.log_dir is not None:
            return self.log_dir
        if self.state_dir is not None:
            return self.state_dir / "logs"
        return default_log_dir()


def parse_address(address: str) -> tuple[str, int]:
    """``"HOST:PORT"`` (``"[::1]:PORT"`` for IPv6) as (host, port)."""
    try:
        parsed = _wire.parse_address(address)
    except ValueError:
        parsed = ""
    if isinstance(parsed, str):
        raise ConfigError(f"listen must be HOST:PORT, not {address!r}")
    return parsed


_LIMIT_KEYS = {"cpu", "memory", "io_read_bps", "io_write_bps", "io_path", "pids"}
_RETENTION_KEYS = {"max_age", "max_total", "max_log_size", "forget_after", "interval"}
_OWNER_KEYS = {"uid", "gid", "groups", "run_as"}


def _table(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a table")
    return value


def _unknown(keys: set[str], known: set[str], where: str) -> None:
    extra = sorted(keys - known)
    if extra:
        raise ConfigError(
            f"unknown key{'s' if len(extra) > 1 else ''} in {where}: {', '.join(extra)}"
        )


def config_from_mapping(data: Mapping[str, Any], base: Path = Path()) -> ServerConfig:
    """A ``ServerConfig`` from parsed TOML; relative paths are taken from ``base``."""
    fields = {f.name for f in dataclasses.fields(ServerConfig)}
    _unknown(set(data), fields, "the configuration")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("socket", "tls_cert", "tls_key", "client_ca", "state_dir", "log_dir"):
            if not isinstance(value, str):
                raise ConfigError(f"{key} must be a path")
            kwargs[key] = base / value
        elif key == "default_limits":
            limits = _table(value, key)
            _unknown(set(limits), _LIMIT_KEYS, key)
            kwargs[key] = Limits(**limits)
        elif key == "retention":
            kwargs[key] = retention_from_mapping(_table(value, key))
        elif key == "owners":
            owners = {}
            for name, spec in _table(value, key).items():
                spec = _table(spec, f"owners.{name}")
                _unknown(set(spec), _OWNER_KEYS, f"owners.{name}")
                if "groups" in spec:
                    spec = {**spec, "groups": tuple(spec["groups"])}
                owners[name] = OwnerConfig(**spec)
            kwargs[key] = owners
        else:
            kwargs[key] = value
    try:
        return ServerConfig(**kwargs)
    except TypeError as e:
        raise ConfigError(str(e)) from None


def retention_from_mapping(table: Mapping[str, Any]) -> Retention:
    """A ``Retention`` from the ``[retention]`` table: seconds and bytes as numbers,
    ``"none"`` for a rule turned off, ``max_total = "auto"``."""
    _unknown(set(table), _RETENTION_KEYS, "retention")
    values: dict[str, Any] = {k: None if v == "none" else v for k, v in table.items()}
    if values.get("interval", 0) is None:
        raise ConfigError('retention.interval cannot be "none"')
    try:
        return Retention(**values)
    except InvalidArgument as e:
        raise ConfigError(str(e)) from None


def load_config(path: str | Path | None = None) -> ServerConfig:
    """The configuration in the TOML file at ``path`` (relative paths in it are taken from
    the file's directory); without a path, the defaults."""
    if path is None:
        return ServerConfig()
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None
    return config_from_mapping(data, path.parent.absolute())
