"""The jobworker service: gRPC over mutual TLS (and a local Unix socket), per-owner.

The public surface, for ``jobworker serve`` / ``jobworker certs`` and for embedding::

    config = load_config("server.toml")          # or ServerConfig(listen=..., ...)
    run(config)                                   # until SIGTERM/SIGINT; returns 0
    await serve(config, stop_event)               # the same, inside your event loop
    make_certs("certs/", users=["alice"])         # a CA, server and client certificates

Everything else in this package is private.
"""

from ._app import run, serve
from ._auth import OWNER_NAMESPACE, owner_id
from ._certs import make_certs
from ._config import ConfigError, OwnerConfig, ServerConfig, load_config
from ._paths import default_log_dir, default_socket_path, default_state_dir

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
