"""The Docker API client: the event stream's line splitting, and real calls over TLS to a
small daemon stand-in on 127.0.0.1 that checks the client certificate like dockerd --tlsverify."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from pymachine.errors import ProvisionError
from pymachine.guest.certs import CertificateAuthority, CertPaths
from pymachine.guest.dockerapi import DockerAPI, EventStream, api_for

CONTAINER = "4f1c2e9d8b7a6f5e4d3c2b1a0f9e8d7c6b5a4f3e2d1c0b9a8f7e6d5c4b3a2f1e"


def event(action: str, name: str = "web", time_nano: int = 1700000000123456789) -> dict:
    """A container event as Docker 20.10 sends it on /events."""
    return {
        "status": action,
        "id": CONTAINER,
        "from": "busybox",
        "Type": "container",
        "Action": action,
        "Actor": {"ID": CONTAINER, "Attributes": {"image": "busybox", "name": name}},
        "scope": "local",
        "time": time_nano // 10**9,
        "timeNano": time_nano,
    }


def line(data: dict) -> bytes:
    return json.dumps(data, ensure_ascii=False).encode() + b"\n"  # Go writes UTF-8 as is


class FakeResponse:
    """What EventStream uses of a streamed requests.Response."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = chunks
        self.consumed = 0
        self.chunk_sizes: list[object] = []
        self.closed = False

    def iter_content(self, chunk_size=1):
        self.chunk_sizes.append(chunk_size)
        for chunk in self.chunks:
            self.consumed += 1
            yield chunk

    def close(self) -> None:
        self.closed = True


def test_event_split_across_chunks_comes_out_once_complete() -> None:
    whole = line(event("start"))
    response = FakeResponse([whole[:10], whole[10:57], whole[57:-1], whole[-1:]])
    stream = iter(EventStream(response))
    assert next(stream) == event("start")
    assert response.consumed == 4  # not before its newline arrived
    assert list(stream) == []
    assert response.chunk_sizes == [None]  # data as it arrives, not in fixed blocks


def test_several_events_in_one_chunk_and_one_event_per_chunk() -> None:
    create, start, die = event("create"), event("start"), event("die")
    response = FakeResponse([line(create) + line(start) + line(die)[:20], line(die)[20:], line(event("destroy"))])
    seen = []
    for item in EventStream(response):
        seen.append((item["Action"], response.consumed))
    # Each event is handed over as soon as its chunk is read, before the next chunk.
    assert seen == [("create", 1), ("start", 1), ("die", 2), ("destroy", 3)]


def test_blank_keepalive_lines_and_unicode_split_inside_a_character() -> None:
    data = line(event("start", name="café-ünï"))
    cut = data.index("é".encode()) + 1  # in the middle of a two-byte character
    response = FakeResponse([b"\n", data[:cut], data[cut:], b"\r\n", b"  \n"])
    assert [e["Actor"]["Attributes"]["name"] for e in EventStream(response)] == ["café-ünï"]


def test_an_unfinished_last_event_is_not_guessed() -> None:
    response = FakeResponse([line(event("start")), line(event("die"))[:-5]])
    assert [e["Action"] for e in EventStream(response)] == ["start"]


def test_close_closes_the_response() -> None:
    response = FakeResponse([])
    EventStream(response).close()
    assert response.closed


# -- over TLS to 127.0.0.1 -----------------------------------------------------------


class Daemon(BaseHTTPRequestHandler):
    """Just enough of dockerd's API."""

    protocol_version = "HTTP/1.1"
    requests: list[str] = []
    release = threading.Event()

    def log_message(self, *args) -> None:  # quiet
        pass

    def _json(self, status: int, body: object) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Api-Version", "1.41")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def do_GET(self) -> None:
        url = urlparse(self.path)
        self.requests.append(self.path)
        if url.path == "/_ping":
            body = b"OK"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; charset=utf-8")
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(body)
        elif url.path == "/v1.41/version":
            self._json(200, {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41", "Os": "linux", "Arch": "amd64"})
        elif url.path == "/v1.41/containers/json":
            self._json(200, [{"Id": CONTAINER, "Names": ["/web"], "State": "running"}])
        elif url.path == f"/v1.41/containers/{CONTAINER}/json":
            self._json(200, {"Id": CONTAINER, "Name": "/web"})
        elif url.path.startswith("/v1.41/containers/"):
            self._json(404, {"message": f"No such container: {url.path.split('/')[3]}"})
        elif url.path == "/v1.41/events":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.flush()
            self._chunk(line(event("start")))
            # The next events come only once the client has read the first one:
            # a client that buffers until the stream ends would hang here.
            self.release.wait(5)
            both = line(event("kill")) + line(event("die"))
            self._chunk(both[:30])
            self._chunk(both[30:])
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        else:
            self._json(404, {"message": "page not found"})


@pytest.fixture(scope="module")
def machine_certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    root = tmp_path_factory.mktemp("api")
    ca = CertificateAuthority(root / "certs")
    machine = CertPaths(root / "machines" / "dev")
    ca.issue_server(machine, "dev", ["10.0.2.15"])
    return machine


@pytest.fixture
def daemon(machine_certs: CertPaths):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(machine_certs.server_cert, machine_certs.server_key)
    context.load_verify_locations(machine_certs.ca)
    context.verify_mode = ssl.CERT_REQUIRED
    server = ThreadingHTTPServer(("127.0.0.1", 0), Daemon)
    server.daemon_threads = True
    server.socket = context.wrap_socket(server.socket, server_side=True)
    Daemon.requests = []
    Daemon.release = threading.Event()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        Daemon.release.set()
        server.shutdown()
        server.server_close()


@pytest.fixture
def hostile_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Proxy and CA settings that would break the client if it read them."""
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")
    monkeypatch.setenv("https_proxy", "http://127.0.0.1:9")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))
    monkeypatch.setenv("CURL_CA_BUNDLE", str(tmp_path / "no-such-bundle.pem"))


def test_calls_over_tls_with_the_machine_certificates(daemon: int, machine_certs: CertPaths, hostile_environment: None) -> None:
    api = api_for(machine_certs.directory, daemon, timeout=5)
    try:
        assert api.ping() is True
        assert api.version()["Version"] == "20.10.24+dfsg1"
        assert api.containers()[0]["Id"] == CONTAINER
        assert api.inspect(CONTAINER) == {"Id": CONTAINER, "Name": "/web"}
        assert api.inspect("gone") is None
        api.wait_ready(2)
    finally:
        api.close()
    assert Daemon.requests[:3] == ["/_ping", "/v1.41/version", "/v1.41/containers/json"]


def test_events_stream_as_they_are_sent(daemon: int, machine_certs: CertPaths, hostile_environment: None) -> None:
    api = DockerAPI("127.0.0.1", daemon, machine_certs, timeout=5)
    filters = {"type": ["container"], "event": ["create", "start", "die", "destroy"]}
    stream = api.subscribe(filters, read_timeout=10)
    try:
        events = iter(stream)
        first = next(events)
        assert first["Action"] == "start"
        Daemon.release.set()
        assert [e["Action"] for e in events] == ["kill", "die"]
    finally:
        stream.close()
        api.close()
    sent = urlparse(Daemon.requests[-1])
    assert sent.path == "/v1.41/events"
    assert json.loads(parse_qs(sent.query)["filters"][0]) == filters


def test_a_client_without_the_machine_certificates_gets_nothing(daemon: int, machine_certs: CertPaths, tmp_path: Path) -> None:
    other = CertificateAuthority(tmp_path / "other")
    other.ensure()
    # Our CA, another CA's client certificate: the daemon refuses the handshake.
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "ca.pem").write_bytes(machine_certs.ca.read_bytes())
    (mixed / "cert.pem").write_bytes(other.paths.cert.read_bytes())
    (mixed / "key.pem").write_bytes(other.paths.key.read_bytes())
    api = api_for(mixed, daemon, timeout=2)
    try:
        assert api.ping(timeout=2) is False
    finally:
        api.close()
    # Another CA as trust root: the client refuses the daemon.
    api = DockerAPI("127.0.0.1", daemon, other.paths, timeout=2)
    try:
        assert api.ping(timeout=2) is False
    finally:
        api.close()


def test_wait_ready_gives_up_with_a_provision_error(machine_certs: CertPaths) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = api_for(machine_certs.directory, port, timeout=1)
    started = time.monotonic()
    try:
        with pytest.raises(ProvisionError, match=f"did not answer on https://127.0.0.1:{port} within 0s; see the log"):
            api.wait_ready(0.3, on_failure=lambda: "; see the log")
    finally:
        api.close()
    assert time.monotonic() - started < 2
