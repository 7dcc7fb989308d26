"""TLS certificates for the Docker daemon, and the SSH keys of each machine."""

from __future__ import annotations

import base64
import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path

import paramiko
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pymachine.errors import MachineError
from pymachine.guest import certs as certs_module
from pymachine.guest.certs import (
    CertificateAuthority,
    CertPaths,
    SSHKeyPair,
    expiry,
    server_needs_renewal,
)


@pytest.fixture(scope="module")
def issued(tmp_path_factory: pytest.TempPathFactory) -> tuple[CertificateAuthority, CertPaths]:
    """One CA and one machine folder with a server certificate (key generation is the slow part)."""
    root = tmp_path_factory.mktemp("certs")
    ca = CertificateAuthority(root / "certs")
    machine = CertPaths(root / "machines" / "dev")
    ca.issue_server(machine, "dev", ["10.0.2.15", "192.168.56.10"])
    return ca, machine


def load(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_ca_and_client_cert_are_made_once_and_reused(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "certs")
    ca.ensure()
    paths = ca.paths
    first = {p: p.read_bytes() for p in (paths.ca, paths.ca_key, paths.cert, paths.key)}
    ca.ensure()
    CertificateAuthority(tmp_path / "certs").ensure()
    assert {p: p.read_bytes() for p in first} == first
    assert mode(paths.directory) == 0o700


def test_client_cert_is_signed_by_the_ca_for_client_auth(issued) -> None:
    ca, _ = issued
    ca_cert, client = load(ca.paths.ca), load(ca.paths.cert)
    client.verify_directly_issued_by(ca_cert)
    usage = client.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert ca_cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert client.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False


def test_an_expiring_client_cert_is_renewed_but_the_ca_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = CertificateAuthority(tmp_path / "certs")
    ca.ensure()
    ca_before = ca.paths.ca.read_bytes()
    client_before = ca.paths.cert.read_bytes()
    # Ten days before the client certificate runs out, ensure() makes a new one.
    expires = load(ca.paths.cert).not_valid_after_utc
    monkeypatch.setattr(certs_module, "_now", lambda: expires - datetime.timedelta(days=10))
    ca.ensure()
    assert ca.paths.ca.read_bytes() == ca_before
    assert ca.paths.cert.read_bytes() != client_before


def test_server_cert_names_loopback_localhost_hostname_and_guest_addresses(issued) -> None:
    ca, machine = issued
    server = load(machine.server_cert)
    server.verify_directly_issued_by(load(ca.paths.ca))
    sans = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = set(sans.get_values_for_type(x509.IPAddress))
    assert ips == {ipaddress.ip_address(a) for a in ("127.0.0.1", "::1", "10.0.2.15", "192.168.56.10")}
    assert set(sans.get_values_for_type(x509.DNSName)) == {"localhost", "dev"}
    usage = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert isinstance(server.public_key(), ec.EllipticCurvePublicKey)


def test_duplicate_addresses_appear_once(tmp_path: Path) -> None:
    ca = CertificateAuthority(tmp_path / "certs")
    machine = CertPaths(tmp_path / "m")
    ca.issue_server(machine, "m", ["127.0.0.1", "10.0.2.15", "10.0.2.15"])
    sans = load(machine.server_cert).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    ips = sans.get_values_for_type(x509.IPAddress)
    assert sorted(map(str, ips)) == sorted(["127.0.0.1", "::1", "10.0.2.15"])


def test_machine_folder_is_a_docker_cert_path_with_private_keys_0600(issued) -> None:
    ca, machine = issued
    assert machine.ca.read_bytes() == ca.paths.ca.read_bytes()
    assert machine.cert.read_bytes() == ca.paths.cert.read_bytes()
    assert machine.key.read_bytes() == ca.paths.key.read_bytes()
    for key in (machine.key, machine.server_key, ca.paths.key, ca.paths.ca_key):
        assert mode(key) == 0o600, key
        assert serialization.load_pem_private_key(key.read_bytes(), password=None)
    for cert in (machine.ca, machine.cert, machine.server_cert):
        assert mode(cert) == 0o644, cert
    assert not list(machine.directory.glob("*.tmp"))


def test_server_needs_renewal_only_when_something_is_wrong(issued, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca, machine = issued
    assert server_needs_renewal(machine, ["10.0.2.15"], ca) is False
    assert server_needs_renewal(machine, [], ca) is False
    # An address the certificate does not name (the guest's IP changed).
    assert server_needs_renewal(machine, ["10.0.2.16"], ca) is True
    # Signed by another CA (the user ran regenerate-certs --client-certs elsewhere).
    other = CertificateAuthority(tmp_path / "other")
    other.ensure()
    assert server_needs_renewal(machine, ["10.0.2.15"], other) is True
    # Close to expiry.
    expires = load(machine.server_cert).not_valid_after_utc
    monkeypatch.setattr(certs_module, "_now", lambda: expires - datetime.timedelta(days=29))
    assert server_needs_renewal(machine, ["10.0.2.15"], ca) is True
    monkeypatch.setattr(certs_module, "_now", lambda: expires - datetime.timedelta(days=31))
    assert server_needs_renewal(machine, ["10.0.2.15"], ca) is False


def test_server_needs_renewal_when_missing_or_damaged(issued, tmp_path: Path) -> None:
    ca, _ = issued
    empty = CertPaths(tmp_path / "none")
    assert server_needs_renewal(empty, [], ca) is True
    damaged = CertPaths(tmp_path / "damaged")
    damaged.directory.mkdir()
    damaged.server_cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    assert server_needs_renewal(damaged, [], ca) is True


def test_expiry_reads_the_date_or_none(issued, tmp_path: Path) -> None:
    _, machine = issued
    when = expiry(machine.server_cert)
    assert when is not None
    assert datetime.timedelta(days=1000) < when - datetime.datetime.now(datetime.timezone.utc) < datetime.timedelta(days=1100)
    assert expiry(tmp_path / "missing.pem") is None


# -- a real TLS handshake ------------------------------------------------------------


def _serve_once(machine: CertPaths) -> tuple[socket.socket, dict, threading.Thread]:
    """A TLS server on 127.0.0.1 that requires a client certificate, like dockerd --tlsverify."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(machine.server_cert, machine.server_key)
    context.load_verify_locations(machine.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    result: dict = {}

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            conn.settimeout(10)
            with context.wrap_socket(conn, server_side=True) as tls:
                peer = tls.getpeercert()
                result["peer"] = dict(x[0] for x in peer["subject"])
                tls.sendall(b"OK " + tls.recv(16))
        except (ssl.SSLError, OSError) as exc:
            result["error"] = exc

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, result, thread


def _client_context(machine: CertPaths, with_client_cert: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(machine.ca))
    if with_client_cert:
        context.load_cert_chain(machine.cert, machine.key)
    return context


def test_tls_handshake_through_127_0_0_1_with_client_certificate(issued) -> None:
    _, machine = issued
    listener, result, thread = _serve_once(machine)
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            # server_hostname 127.0.0.1: the client checks the IP SAN, as docker does.
            with _client_context(machine, True).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                tls.sendall(b"ping")
                assert tls.recv(16) == b"OK ping"
        thread.join(10)
    finally:
        listener.close()
    assert "error" not in result, result
    assert result["peer"]["commonName"] == "pymachine client"


def test_tls_client_without_its_certificate_is_refused(issued) -> None:
    _, machine = issued
    listener, result, thread = _serve_once(machine)
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises((ssl.SSLError, ConnectionError)):
                with _client_context(machine, False).wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                    # TLS 1.3 reports the missing certificate on the first read.
                    tls.sendall(b"ping")
                    tls.recv(16)
        thread.join(10)
    finally:
        listener.close()
    assert isinstance(result.get("error"), ssl.SSLError)
    assert "peer" not in result


def test_tls_client_refuses_a_name_the_certificate_lacks(issued) -> None:
    _, machine = issued
    listener, _, thread = _serve_once(machine)
    port = listener.getsockname()[1]
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                _client_context(machine, True).wrap_socket(raw, server_hostname="other.example")
        thread.join(10)
    finally:
        listener.close()


# -- SSH keys ------------------------------------------------------------------------


def test_ssh_key_pair_is_ed25519_paramiko_can_load(tmp_path: Path) -> None:
    pair = SSHKeyPair.generate("pymachine@dev")
    pair.write(tmp_path / "id_ed25519")
    assert mode(tmp_path / "id_ed25519") == 0o600
    assert mode(tmp_path / "id_ed25519.pub") == 0o644
    key = paramiko.Ed25519Key.from_private_key_file(str(tmp_path / "id_ed25519"))
    keytype, blob, comment = pair.public_line.split()
    assert keytype == "ssh-ed25519" == key.get_name()
    assert blob == key.get_base64()
    assert comment == "pymachine@dev"
    assert SSHKeyPair.public_of(tmp_path / "id_ed25519") == pair.public_line
    # paramiko signs with it and verifies the signature with the public line alone.
    signature = key.sign_ssh_data(b"challenge")
    public = paramiko.Ed25519Key(data=base64.b64decode(blob))
    signature.rewind()
    assert public.verify_ssh_sig(b"challenge", signature)


def test_each_generated_key_is_new(tmp_path: Path) -> None:
    assert SSHKeyPair.generate("a").private_pem != SSHKeyPair.generate("a").private_pem


def test_missing_public_key_names_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(MachineError, match="regenerate-certs"):
        SSHKeyPair.public_of(tmp_path / "id_ed25519")
