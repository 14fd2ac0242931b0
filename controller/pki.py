"""Test PKI for a qnode link: a CA, KME server certificates, SAE client certificates, CURVE keys.

ETSI GS QKD 014 §4 makes mutual TLS mandatory: the KME proves its KME ID to the SAE and the SAE
proves its SAE ID to the KME, both from certificates. ``qnode pki init`` writes everything a new
user needs to try the API in one step; it is a *test* CA (keys on disk, unencrypted) and says so.
The SAE ID is the certificate's common name (CN); KME certificates carry SANs for
``localhost``/``127.0.0.1`` so a local client verifies the host name.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CURVE_DIR = "curve"
_VALIDITY = dt.timedelta(days=825)


@dataclass(frozen=True)
class Issued:
    """Paths of one issued certificate and its private key."""

    name: str
    cert: Path
    key: Path


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret file readable by the owner only (mode 0600 from creation)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _check_name(name: str) -> None:
    if not name or any(c in name for c in "/\\\0") or name.startswith(".") or name == "ca":
        raise ValueError(f"invalid certificate name {name!r} (no path separators, not 'ca')")


def _load_or_create_ca(directory: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    ca_cert_path, ca_key_path = directory / "ca.pem", directory / "ca.key"
    if ca_cert_path.exists() and ca_key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_cert_path.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        return cert, key
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "qnode test CA")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
    ca_cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(ca_key_path, _key_pem(key))
    return cert, key


def _issue(
    directory: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    name: str,
    server: bool,
) -> Issued:
    """Issue a leaf certificate: servers (KMEs) get serverAuth+clientAuth and local SANs."""
    _check_name(name)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if server:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.DNSName(name),
                    x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
                    x509.IPAddress(ipaddress.IPv6Address("::1")),
                ]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    cert_path, key_path = directory / f"{name}.pem", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    _write_private(key_path, _key_pem(key))
    return Issued(name, cert_path, key_path)


def create_curve_keys(directory: Path, names: list[str]) -> dict[str, tuple[Path, Path]]:
    """Create CurveZMQ key pairs ``NAME.key`` (public) and ``NAME.key_secret`` in ``directory``.

    Existing pairs are kept (re-running ``pki init`` must not invalidate allowed-client lists).
    """
    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, Path]] = {}
    for name in names:
        _check_name(name)
        public, secret = directory / f"{name}.key", directory / f"{name}.key_secret"
        if not (public.exists() and secret.exists()):
            public_s, secret_s = zmq.auth.create_certificates(str(directory), name)
            public, secret = Path(public_s), Path(secret_s)
            os.chmod(secret, 0o600)
        out[name] = (public, secret)
    return out


def init_pki(
    directory: Path,
    kmes: list[str],
    saes: list[str],
    curve_clients: tuple[str, ...] = ("operator", "monitor"),
) -> dict[str, Issued]:
    """Write a test CA, one certificate per KME and SAE, and CURVE key pairs under ``directory``.

    CURVE pairs are made for every KME (servers of telemetry and control) and for the clients in
    ``curve_clients`` (an operator key and a read-only monitor key by default).
    """
    names = list(kmes) + list(saes)
    if len(set(names)) != len(names):
        raise ValueError("KME and SAE names must be distinct")
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = _load_or_create_ca(directory)
    issued = {name: _issue(directory, ca_cert, ca_key, name, server=True) for name in kmes}
    issued.update({name: _issue(directory, ca_cert, ca_key, name, server=False) for name in saes})
    create_curve_keys(directory / CURVE_DIR, list(kmes) + list(curve_clients))
    _update_manifest(directory, kmes, saes)
    return issued


MANIFEST = "pki.json"


def _update_manifest(directory: Path, kmes: list[str], saes: list[str]) -> None:
    """Record KME and SAE names in creation order (``qnode link`` gives the first SAE to Alice)."""
    path = directory / MANIFEST
    data = read_manifest(directory)
    for kind, names in (("kmes", kmes), ("saes", saes)):
        data[kind] = data.get(kind, []) + [n for n in names if n not in data.get(kind, [])]
    path.write_text(json.dumps(data, indent=2) + "\n")


def read_manifest(directory: Path) -> dict[str, list[str]]:
    """``{"kmes": [...], "saes": [...]}`` as written by ``init_pki`` (empty if absent)."""
    path = directory / MANIFEST
    if not path.exists():
        return {"kmes": [], "saes": []}
    data = json.loads(path.read_text())
    return {"kmes": list(data.get("kmes", [])), "saes": list(data.get("saes", []))}


def certificate_common_name(cert_pem: bytes) -> str:
    """The CN of a PEM certificate (the SAE or KME ID it stands for)."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value  # type: ignore[return-value]
