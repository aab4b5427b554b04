"""Certificates for a working mutual-TLS setup in one call: a CA, a server certificate and
client certificates, ECDSA P-256, private keys 0600.

Files in the directory: ``ca.pem``/``ca.key``, ``server.pem``/``server.key`` and
``<name>.pem``/``<name>.key`` per user.  Nothing is ever overwritten: files that exist
are kept (an existing CA issues the new users' certificates), and every file is created
with ``O_EXCL | O_NOFOLLOW``.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["issue", "make_certs", "new_ca", "new_key"]

_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._@-]{0,63}")
_RESERVED = {"ca", "server"}


def new_key() -> Any:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def new_ca(name: str = "jobworker CA", days: int = 3650) -> tuple[Any, Any]:
    """(certificate, key) of a new self-signed CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID

    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def issue(
    ca: tuple[Any, Any],
    name: str,
    *,
    server_names: Sequence[str] | None = None,
    usages: Sequence[str] = ("clientAuth",),
    not_before: datetime.datetime | None = None,
    not_after: datetime.datetime | None = None,
    days: int = 365,
) -> tuple[Any, Any]:
    """(certificate, key) for Subject CN ``name``, signed by ``ca``; ``usages`` are the
    extended key usages (``clientAuth``, ``serverAuth``); ``server_names`` the DNS names
    and IP addresses of a server certificate."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert, ca_key = ca
    key = new_key()
    now = _now()
    oids = {
        "clientAuth": ExtendedKeyUsageOID.CLIENT_AUTH,
        "serverAuth": ExtendedKeyUsageOID.SERVER_AUTH,
    }
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before or now - datetime.timedelta(minutes=5))
        .not_valid_after(not_after or now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if usages:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([oids[u] for u in usages]), critical=False
        )
    if server_names is not None:
        alt: list[x509.GeneralName] = []
        for n in server_names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        builder = builder.add_extension(x509.SubjectAlternativeName(alt), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def _create(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def write_pair(directory: Path, stem: str, cert: Any, key: Any) -> list[Path]:
    """Write ``<stem>.key`` (0600) and ``<stem>.pem``; neither may exist."""
    from cryptography.hazmat.primitives import serialization

    key_path, cert_path = directory / f"{stem}.key", directory / f"{stem}.pem"
    pem_key = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    _create(key_path, pem_key, 0o600)
    try:
        _create(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except BaseException:
        os.unlink(key_path)
        raise
    return [cert_path, key_path]


def _load_ca(directory: Path) -> tuple[Any, Any] | None:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert_path, key_path = directory / "ca.pem", directory / "ca.key"
    if not cert_path.exists() and not key_path.exists():
        return None
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError) as e:
        raise ValueError(f"cannot use the CA in {directory}: {e}") from None
    return cert, key


def _exists(directory: Path, stem: str) -> bool:
    return (directory / f"{stem}.pem").exists() or (directory / f"{stem}.key").exists()


def make_certs(
    directory: str | os.PathLike[str],
    *,
    users: Sequence[str] = (),
    admins: Sequence[str] = ("admin",),
    server_names: Sequence[str] = (),
    days: int = 365,
) -> list[Path]:
    """Make what is missing in ``directory`` (created 0700 if needed): the CA, the server
    certificate (for localhost, 127.0.0.1, ::1 and ``server_names``; serverAuth) and a
    client certificate (clientAuth) for each of ``users`` and ``admins``.  Returns the
    files written; files already there are left as they are.

    Raises ``ValueError`` for a name that cannot be a file name (letters, digits, ``._@-``;
    not ``ca`` or ``server``).
    """
    directory = Path(directory)
    names = list(dict.fromkeys([*admins, *users]))
    for name in names:
        if not _NAME.fullmatch(name) or name in _RESERVED:
            raise ValueError(
                f"user name {name!r} cannot be used: letters, digits and ._@- only,"
                " not 'ca' or 'server'"
            )
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    written: list[Path] = []
    ca = _load_ca(directory)
    if ca is None:
        ca = new_ca()
        written += write_pair(directory, "ca", *ca)
    if not _exists(directory, "server"):
        cert, key = issue(
            ca,
            "jobworker server",
            server_names=["localhost", "127.0.0.1", "::1", *server_names],
            usages=("serverAuth",),
            days=days,
        )
        written += write_pair(directory, "server", cert, key)
    for name in names:
        if not _exists(directory, name):
            written += write_pair(directory, name, *issue(ca, name, days=days))
    return written
