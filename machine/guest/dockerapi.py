"""A small client for the Docker Engine API over TLS, as the host sees each machine.

Provisioning waits for /_ping with it; the forward watcher follows /events and reads
/containers with it. It uses `requests` with the machine's client certificate and
verifies the daemon against pymachine's CA.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pymachine.errors import ProvisionError
from pymachine.guest.certs import CertPaths

#: Every call pymachine makes is in API 1.41 (Docker 20.10), which the image's Docker 26
#: (API 1.45) and every daemon since serve: nothing newer is needed.
API_VERSION = "1.41"


class DockerAPI:
    """Calls to one daemon at https://host:port with client certificates from `certs`."""

    def __init__(self, host: str, port: int, certs: CertPaths, timeout: float = 10.0) -> None:
        import requests

        self.base = f"https://{host}:{port}"
        self.timeout = timeout
        self.session = requests.Session()
        # Never let REQUESTS_CA_BUNDLE or *_PROXY from the environment override the
        # machine's own CA or send its API traffic through a proxy.
        self.session.trust_env = False
        self.session.verify = str(certs.ca)
        self.session.cert = (str(certs.cert), str(certs.key))

    def close(self) -> None:
        self.session.close()

    def _url(self, path: str) -> str:
        if path == "/_ping":
            return self.base + path
        return f"{self.base}/v{API_VERSION}{path}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.session.get(self._url(path), params=params or None, timeout=self.timeout)
        response.raise_for_status()
        return response.json()

    def ping(self, timeout: float | None = None) -> bool:
        """True if the daemon answers /_ping with OK."""
        import requests

        try:
            response = self.session.get(self._url("/_ping"), timeout=timeout or self.timeout)
        except requests.RequestException:
            return False
        return response.status_code == 200 and response.text.strip() == "OK"

    def version(self) -> dict[str, Any]:
        return self.get("/version")

    def containers(self) -> list[dict[str, Any]]:
        """Running containers, as /containers/json lists them."""
        return self.get("/containers/json")

    def inspect(self, container_id: str) -> dict[str, Any] | None:
        import requests

        try:
            return self.get(f"/containers/{container_id}/json")
        except requests.HTTPError as exc:
            if exc.response is not None and exc.response.status_code == 404:
                return None
            raise

    def subscribe(self, filters: dict[str, list[str]], read_timeout: float | None = None) -> EventStream:
        """Subscribe to /events now; iterate the result to read them as they come."""
        response = self.session.get(
            self._url("/events"),
            params={"filters": json.dumps(filters)},
            stream=True,
            timeout=(self.timeout, read_timeout),
        )
        response.raise_for_status()
        return EventStream(response)

    def wait_ready(self, timeout: float, on_failure: Any = None, hopeless: Any = None) -> None:
        """Poll /_ping until it answers OK; raise ProvisionError after `timeout` seconds,
        or as soon as `hopeless()` says waiting longer cannot help."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.ping(timeout=min(5.0, max(0.5, deadline - time.monotonic()))):
                return
            if hopeless is not None and hopeless():
                break
            time.sleep(0.25)
        detail = on_failure() if on_failure else ""
        raise ProvisionError(f"The Docker daemon did not answer on {self.base} within {timeout:.0f}s{detail}")


class EventStream:
    """Events of one /events response, each as soon as its line is complete."""

    def __init__(self, response: Any) -> None:
        self.response = response

    def __iter__(self) -> Iterator[dict[str, Any]]:
        buffer = b""
        # chunk_size=None: data as it arrives (the daemon sends each event as one HTTP
        # chunk), so an event is handled the moment it is sent, not when a buffer fills.
        for chunk in self.response.iter_content(chunk_size=None):
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield json.loads(line)

    def close(self) -> None:
        self.response.close()


def api_for(config_dir: Path, port: int, timeout: float = 10.0) -> DockerAPI:
    """The API of the machine whose folder (a DOCKER_CERT_PATH) is `config_dir`."""
    return DockerAPI("127.0.0.1", port, CertPaths(config_dir), timeout=timeout)
