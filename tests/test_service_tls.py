"""Who gets in over TCP: mutual TLS 1.3 with a certificate of the configured CA only."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from jobworker import ServiceUnavailable, Unauthenticated
from jobworker.client import Client, TLSFiles, client_tls_context

from servicekit import Pki, ServerThread, make_pki, run, server_config


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[ServerThread]:
    with ServerThread(server_config(tmp_path_factory.mktemp("srv"), pki)) as s:
        yield s


async def list_as(address: str, tls: TLSFiles | ssl.SSLContext) -> int:
    async with Client(address, tls=tls) as c:
        return len(await c.list())


def context(pki: Pki, cert: str | None, **options: object) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(pki.dir / "ca.pem")
    ctx.set_alpn_protocols(["h2"])
    if cert is not None:
        ctx.load_cert_chain(pki.dir / f"{cert}.pem", pki.dir / f"{cert}.key")
    for name, value in options.items():
        setattr(ctx, name, value)
    return ctx


def test_a_certificate_of_the_ca_gets_in(server: ServerThread, pki: Pki) -> None:
    assert run(list_as(server.tcp, pki.tls("alice"))) == 0


@pytest.mark.parametrize("cert", ["expired", "serveronly", "stranger"])
def test_refused_certificates(server: ServerThread, pki: Pki, cert: str) -> None:
    # expired; with serverAuth usage only; signed by another CA.  Each would be "alice".
    with pytest.raises(Unauthenticated, match="did not accept this client's certificate"):
        run(list_as(server.tcp, pki.tls(cert)))


def test_refused_without_a_client_certificate(server: ServerThread, pki: Pki) -> None:
    with pytest.raises(Unauthenticated, match="did not accept this client's certificate"):
        run(list_as(server.tcp, context(pki, None)))


def test_refused_over_tls_1_2(server: ServerThread, pki: Pki) -> None:
    tls12 = context(pki, "alice", maximum_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises(Unauthenticated, match="TLS version"):
        run(list_as(server.tcp, tls12))
    # The same certificate, allowed TLS 1.3, gets in: the version was the only reason.
    assert run(list_as(server.tcp, context(pki, "alice"))) == 0


def test_client_checks_the_servers_certificate(
    server: ServerThread, pki: Pki, tmp_path: Path
) -> None:
    other = make_pki(tmp_path / "other")
    wrong_ca = TLSFiles(
        ca=other.dir / "ca.pem", cert=pki.dir / "alice.pem", key=pki.dir / "alice.key"
    )
    with pytest.raises(Unauthenticated, match="CERTIFICATE_VERIFY_FAILED"):
        run(list_as(server.tcp, wrong_ca))
    # The server's certificate names localhost and 127.0.0.1, not this.
    misnamed = TLSFiles(**{**vars(pki.tls("alice")), "server_name": "elsewhere.example"})
    with pytest.raises(Unauthenticated):
        run(list_as(server.tcp, misnamed))


def test_tcp_needs_tls_on_the_client_too(server: ServerThread) -> None:
    with pytest.raises(Unauthenticated):
        Client(server.tcp)


def test_nobody_listening_is_unavailable(pki: Pki) -> None:
    with pytest.raises(ServiceUnavailable):
        run(list_as("127.0.0.1:1", pki.tls("alice")))
    with pytest.raises(ServiceUnavailable):
        run(list_as("unix:/nonexistent/jobworker.sock", client_tls_context(pki.tls("alice"))))
