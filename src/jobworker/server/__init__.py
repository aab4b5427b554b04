"""The jobworker service: gRPC over mutual TLS (and a local Unix socket), per-owner.

The public surface, for ``jobworker serve`` / ``jobworker certs`` and for embedding::

    config = load_config("server.toml")          # or ServerConfig(listen=..., ...)
    run(config)                                   # until SIGTERM/SIGINT; returns 0
    await serve(config, stop_event)               # the same, inside your event loop
    make_certs("certs/", users=["alice"])         # a CA, server and client certificates

Everything else in this package is private.  ``serve`` and ``run`` (and the worker they
bring) load on first use, so that a client asking only for ``default_socket_path`` does
not pay for them.
"""

from typing import TYPE_CHECKING

from ._auth import OWNER_NAMESPACE, owner_id
from ._certs import make_certs
from ._config import ConfigError, OwnerConfig, ServerConfig, load_config
from ._paths import default_log_dir, default_socket_path, default_state_dir

if TYPE_CHECKING:
    from ._app import run, serve

__all__ = [
    "OWNER_NAMESPACE",
    "ConfigError",
    "OwnerConfig",
    "ServerConfig",
    "default_log_dir",
    "default_socket_path",
    "default_state_dir",
    "load_config",
    "make_certs",
    "owner_id",
    "run",
    "serve",
]

# Hidden from type checkers, as in jobworker/__init__.py.
if not TYPE_CHECKING:

    def __getattr__(name):
        if name in ("run", "serve"):
            from . import _app

            return getattr(_app, name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
