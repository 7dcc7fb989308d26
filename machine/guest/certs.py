"""TLS for the Docker daemon: one CA and one client certificate for all machines,
one server certificate per machine.

Keys are ECDSA P-256: small, and cheap for the guest to use in every TLS handshake
under software emulation. The server certificate names 127.0.0.1, ::1 and localhost as
well as the guest's own address, because the host reaches the daemon through a
forward on 127.0.0.1 (docker-machine left 127.0.0.1 out, so that path failed).
Private keys are written 0600.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pymachine.errors import MachineError, StoreError
from pymachine.locking import FileLock, LockBusy

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography is imported where keys and certificates are made or read, never at
# import time: most commands (ls, env, status) only need the paths below.
from pymachine.store import atomic_write

#: Seconds a command waits for another one that is making the CA.
LOCK_TIMEOUT = 30.0
CA_DAYS = 3650
LEAF_DAYS = 1095
#: Leaf certificates this close to expiry are renewed by `provision` and `regenerate-certs`.
RENEW_BEFORE = datetime.timedelta(days=30)


@dataclass(frozen=True)
class CertPaths:
    """Where a set of certificates lives; names follow DOCKER_CERT_PATH conventions."""

    directory: Path

    @property
    def ca(self) -> Path:
        return self.directory / "ca.pem"

    @property
    def ca_key(self) -> Path:
        return self.directory / "ca-key.pem"

    @property
    def cert(self) -> Path:
        return self.directory / "cert.pem"

    @property
    def key(self) -> Path:
        return self.directory / "key.pem"

    @property
    def server_cert(self) -> Path:
        return self.directory / "server.pem"

    @property
    def server_key(self) -> Path:
        return self.directory / "server-key.pem"


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _new_key() -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert_pem(cert: x509.Certificate) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return cert.public_bytes(serialization.Encoding.PEM)


def _name(common_name: str) -> x509.Name:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "pymachine"), x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _load_cert(path: Path) -> x509.Certificate:
    from cryptography import x509

    return x509.load_pem_x509_certificate(path.read_bytes())


def _load_key(path: Path) -> ec.EllipticCurvePrivateKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def _expires_soon(cert: x509.Certificate) -> bool:
    return cert.not_valid_after_utc - _now() < RENEW_BEFORE


class CertificateAuthority:
    """The CA and client certificate in the store's certs/ folder, made on first use."""

    def __init__(self, directory: Path) -> None:
        self.paths = CertPaths(Path(directory))

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The CA's own lock: two first `create`s at once must not make two CAs."""
        self.paths.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock = FileLock(self.paths.directory / ".lock")
        try:
            lock.acquire(LOCK_TIMEOUT)
        except LockBusy:
            raise StoreError(f"The certificate authority in {self.paths.directory} is busy with another pymachine command", "Wait for it to finish, then try again") from None
        try:
            yield
        finally:
            lock.release()

    def ensure(self) -> None:
        """Make the CA and the client certificate if missing; renew the client one if expiring."""
        if self._complete() and not _expires_soon(_load_cert(self.paths.cert)):
            return  # the common case, without the lock
        with self._locked():
            if not (self.paths.ca.exists() and self.paths.ca_key.exists()):
                self._make_ca()
                self._make_client()
            elif not self._complete() or _expires_soon(_load_cert(self.paths.cert)):
                self._make_client()

    def _complete(self) -> bool:
        return all(p.exists() for p in (self.paths.ca, self.paths.ca_key, self.paths.cert, self.paths.key))

    def regenerate(self, include_ca: bool = False) -> None:
        """Make new client credentials (and a new CA when asked)."""
        with self._locked():
            if include_ca or not self.paths.ca.exists():
                self._make_ca()
            self._make_client()

    def _make_ca(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        key = _new_key()
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name("pymachine CA"))
            .issuer_name(_name("pymachine CA"))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        atomic_write(self.paths.ca_key, _key_pem(key), mode=0o600)
        atomic_write(self.paths.ca, _cert_pem(cert), mode=0o644)

    def _issue(self, common_name: str, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]) -> tuple[bytes, bytes]:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        ca_key = _load_key(self.paths.ca_key)
        ca_cert = _load_cert(self.paths.ca)
        key = _new_key()
        now = _now()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(common_name))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(min(now + datetime.timedelta(days=LEAF_DAYS), ca_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(ca_key, hashes.SHA256())
        return _cert_pem(cert), _key_pem(key)

    def _make_client(self) -> None:
        from cryptography.x509.oid import ExtendedKeyUsageOID

        cert, key = self._issue("pymachine client", ExtendedKeyUsageOID.CLIENT_AUTH, [])
        atomic_write(self.paths.key, key, mode=0o600)
        atomic_write(self.paths.cert, cert, mode=0o644)

    def issue_server(self, target: CertPaths, hostname: str, addresses: list[str]) -> None:
        """A server certificate for one machine, with the client credentials copied beside it."""
        from cryptography import x509
        from cryptography.x509.oid import ExtendedKeyUsageOID

        self.ensure()
        names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(hostname)]
        seen = set()
        for address in ["127.0.0.1", "::1", *addresses]:
            ip = ipaddress.ip_address(address)
            if ip not in seen:
                seen.add(ip)
                names.append(x509.IPAddress(ip))
        cert, key = self._issue(hostname, ExtendedKeyUsageOID.SERVER_AUTH, names)
        target.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        atomic_write(target.server_key, key, mode=0o600)
        atomic_write(target.server_cert, cert, mode=0o644)
        self.copy_client(target)

    def copy_client(self, target: CertPaths) -> None:
        """Put ca.pem, cert.pem and key.pem in `target`, so it can be a DOCKER_CERT_PATH."""
        atomic_write(target.ca, self.paths.ca.read_bytes(), mode=0o644)
        atomic_write(target.cert, self.paths.cert.read_bytes(), mode=0o644)
        atomic_write(target.key, self.paths.key.read_bytes(), mode=0o600)


def server_needs_renewal(paths: CertPaths, addresses: list[str], ca: CertificateAuthority) -> bool:
    """True if the server certificate is missing, expiring, not from our CA, or lacks an address."""
    from cryptography import x509

    try:
        cert = _load_cert(paths.server_cert)
        ca_cert = _load_cert(ca.paths.ca)
    except (FileNotFoundError, ValueError):
        return True
    if _expires_soon(cert) or cert.issuer != ca_cert.subject:
        return True
    try:
        cert.verify_directly_issued_by(ca_cert)
    except Exception:
        return True
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return True
    present = {str(ip) for ip in sans.get_values_for_type(x509.IPAddress)}
    return any(str(ipaddress.ip_address(a)) not in present for a in ["127.0.0.1", *addresses])


def expiry(path: Path) -> datetime.datetime | None:
    try:
        return _load_cert(path).not_valid_after_utc
    except (FileNotFoundError, ValueError):
        return None


@dataclass(frozen=True)
class SSHKeyPair:
    """An ed25519 key in OpenSSH format (paramiko cannot generate ed25519 keys itself)."""

    private_pem: bytes
    public_line: str

    @classmethod
    def generate(cls, comment: str) -> SSHKeyPair:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519

        key = ed25519.Ed25519PrivateKey.generate()
        private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption())
        public = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
        return cls(private, f"{public} {comment}")

    def write(self, path: Path) -> None:
        atomic_write(path, self.private_pem, mode=0o600)
        atomic_write(path.with_name(path.name + ".pub"), self.public_line + "\n", mode=0o644)

    @staticmethod
    def public_of(path: Path) -> str:
        """The public line beside a private key written by `write`."""
        try:
            return path.with_name(path.name + ".pub").read_text().strip()
        except FileNotFoundError:
            raise MachineError(f"SSH key {path}.pub is missing", "Run `pymachine regenerate-certs` or recreate the machine") from None
