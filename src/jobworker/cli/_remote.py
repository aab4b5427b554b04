"""Talking to the service: one ``jobworker.client.Client`` for the command's connection,
on one event loop for the command's life.

The commands are synchronous (click); each hands ``call`` one coroutine that does its work
with the client.  asyncio, grpclib and protobuf load here, when a command first talks to
the service, so that ``--help``, a usage error or a local ``run`` never pay for them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

from ._connection import Connection, UnixAddress
from ._exitcodes import CliError, ExitCode, Interrupted

if TYPE_CHECKING:
    from jobworker.client import Client

__all__ = ["TIMEOUT", "call", "make_client"]

T = TypeVar("T")

# The longest a start, query or list may take, connecting included: a service that does
# not answer by then is as good as unavailable.  (stop and wait take as long as the job.)
TIMEOUT = 30.0


def make_client(connection: Connection) -> Client:
    from jobworker.client import Client, TLSFiles

    address = connection.address
    if address is None:
        return Client(timeout=TIMEOUT)
    if isinstance(address, UnixAddress):
        return Client(str(address), timeout=TIMEOUT)
    assert connection.ca and connection.cert and connection.key
    tls = TLSFiles(ca=connection.ca, cert=connection.cert, key=connection.key)
    return Client(str(address), tls=tls, timeout=TIMEOUT)


def call(connection: Connection, body: Callable[[Client], Awaitable[T]]) -> T:
    """Run ``body(client)`` on a new event loop; the client is closed at the end, however
    ``body`` ends.  A Ctrl-C cancels ``body`` and raises ``Interrupted`` (exit 130)."""
    import asyncio

    async def main() -> T:
        client = make_client(connection)
        try:
            return await body(client)
        except TimeoutError:
            raise CliError(
                f"the service at {client.address} did not answer within {TIMEOUT:g} s",
                ExitCode.UNAVAILABLE,
            ) from None
        finally:
            await client.aclose()

    try:
        return asyncio.run(main())
    except KeyboardInterrupt:
        # Not as KeyboardInterrupt, which click would answer with a line of its own.
        raise Interrupted from None
