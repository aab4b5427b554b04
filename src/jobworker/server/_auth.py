"""Who is calling: from the connection to an owner, and whether that owner is an admin.

- Over TCP the TLS handshake has already done the checking (``server_tls_context``: TLS
  1.3 only, a client certificate signed by the configured CA, valid now, and — as OpenSSL
  checks for a server — with ``clientAuth`` among its extended key usages if it lists
  any).  The owner's name is the certificate's Subject CN.
- On the local Unix socket (mode 0600 in a 0700 directory, so only the server's own user
  and root can connect) the caller is the server's own user: named after it, and admin.

An owner's id is ``uuid5(OWNER_NAMESPACE, name)``: stable across restarts and machines,
with no state to keep.
"""

from __future__ import annotations

import os
import pwd
import ssl
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobworker import Unauthenticated

__all__ = ["OWNER_NAMESPACE", "Caller", "Identify", "owner_id", "server_tls_context"]

OWNER_NAMESPACE = uuid.UUID("f4159089-cf14-4499-b6af-abafcd394b85")


def owner_id(name: str) -> uuid.UUID:
    """The owner id of the owner called ``name`` (a certificate's CN)."""
    return uuid.uuid5(OWNER_NAMESPACE, name)


@dataclass(frozen=True)
class Caller:
    name: str
    owner_id: uuid.UUID
    admin: bool
    # On the local socket: jobs run as the server's own user.
    local: bool


def server_tls_context(cert: Path, key: Path, client_ca: Path) -> ssl.SSLContext:
    """Mutual TLS 1.3: the server's certificate, and client certificates required and
    verified against ``client_ca``."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(cert, key)
    ctx.load_verify_locations(cafile=client_ca)
    # gRPC clients (grpcio's among them) insist on HTTP/2 being negotiated by ALPN.
    ctx.set_alpn_protocols(["h2"])
    return ctx


def _common_name(cert: dict[str, Any]) -> str | None:
    names = [value for rdn in cert.get("subject", ()) for key, value in rdn if key == "commonName"]
    return names[0] if len(names) == 1 and names[0] else None


class Identify:
    """The caller of an RPC, from its connection (``grpclib``'s ``stream.peer``)."""

    def __init__(self, admins: Collection[str]) -> None:
        self._admins = frozenset(admins)
        try:
            local = pwd.getpwuid(os.geteuid()).pw_name
        except KeyError:  # a uid without a name (in a container, say)
            local = f"uid-{os.geteuid()}"
        self.local = Caller(local, owner_id(local), admin=True, local=True)

    def caller(self, peer: Any) -> Caller:
        cert = peer.cert()
        if cert is None:
            if isinstance(peer.addr(), tuple):
                # TCP is only ever served with TLS; this cannot happen, and must not pass.
                raise Unauthenticated("no client certificate")
            return self.local
        name = _common_name(cert)
        if name is None:
            raise Unauthenticated("the client certificate has no single, non-empty Subject CN")
        return Caller(name, owner_id(name), admin=name in self._admins, local=False)
