"""A private certificate authority for a pool on one machine or a LAN, and tests: `rma tls`.

The CA signs one server certificate for the names given (DNS names and IP addresses), which
the coordinator and the routers serve; workers, routers and tools trust the CA through
RMA_CA_FILE. Keys are written 0600, never through a planted link; certificates are public.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rma.files import write_private

CA_DAYS = 825
SERVER_DAYS = 397  # the longest a browser accepts


@dataclass(frozen=True)
class LocalCa:
    """Where `make_local_ca` wrote its files: the CA certificate, the server's chain and key."""

    ca_file: Path
    cert: Path
    key: Path


def make_local_ca(folder: Path, names: list[str]) -> LocalCa:
    """A new CA and a server certificate for `names` (e.g. localhost, 127.0.0.1, the machine's name)."""
    if not names:
        raise ValueError("a server certificate needs at least one name")
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "RMA pool local CA")])
    ca = (_builder(ca_name, ca_name, ca_key.public_key(), now, CA_DAYS)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(_usage(ca=True), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    server = (_builder(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]), ca_name, key.public_key(),
                       now, SERVER_DAYS)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(_usage(ca=False), critical=True)
              .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
              .add_extension(x509.SubjectAlternativeName([_general_name(n) for n in names]), critical=False)
              .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    found = LocalCa(folder / "ca.pem", folder / "server.pem", folder / "server-key.pem")
    write_private(found.ca_file, ca.public_bytes(pem), mode=0o644)
    write_private(found.cert, server.public_bytes(pem) + ca.public_bytes(pem), mode=0o644)
    write_private(found.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return found


def _builder(subject: x509.Name, issuer: x509.Name, public_key: ec.EllipticCurvePublicKey,
             now: datetime.datetime, days: int) -> x509.CertificateBuilder:
    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days)))


def _usage(ca: bool) -> x509.KeyUsage:
    return x509.KeyUsage(digital_signature=True, key_cert_sign=ca, crl_sign=ca, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         encipher_only=False, decipher_only=False)


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)
