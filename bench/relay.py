"""What the watcher's relay (forwarding/relay.py) costs, on the host alone: throughput and
round-trip latency to an echo/sink server on 127.0.0.1, directly and through the relay on
[::1] (the path a `localhost` client on macOS takes). No VM: the relay's own share.

    .venv/bin/python bench/relay.py [MiB]
"""

from __future__ import annotations

import json
import socket
import statistics
import sys
import threading
import time

from pymachine.driver import Feature, PortForward
from pymachine.forwarding.relay import RelayingDriver, free_port


class Server:
    """A sink (counts bytes, answers the count) and an echo, on 127.0.0.1, like a guest behind a forward."""

    features = frozenset({Feature.LOOPBACK_FORWARDS, Feature.UDP_FORWARDS})
    name = "bench"

    def supports(self, feature: object) -> bool:
        return feature in self.features

    def __init__(self) -> None:
        self.forwards: list[PortForward] = []

    def add_forward(self, forward: PortForward) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", forward.host_port))
        sock.listen(64)
        self.forwards.append(forward)
        threading.Thread(target=self._serve, args=(sock,), daemon=True).start()

    def _serve(self, sock: socket.socket) -> None:
        while True:
            conn, _ = sock.accept()
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    @staticmethod
    def _one(conn: socket.socket) -> None:
        with conn:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            mode = conn.recv(1)
            if mode == b"s":
                total = 0
                while chunk := conn.recv(1 << 20):
                    total += len(chunk)
                conn.sendall(str(total).encode())
            else:
                while chunk := conn.recv(65536):
                    conn.sendall(chunk)

    def remove_forward(self, forward: PortForward) -> None:
        pass

    def list_forwards(self) -> list[PortForward]:
        return list(self.forwards)


def throughput(ip: str, port: int, size: int) -> float:
    block = b"x" * (1 << 20)
    with socket.create_connection((ip, port)) as sock:
        started = time.perf_counter()
        sock.sendall(b"s")
        for _ in range(size // len(block)):
            sock.sendall(block)
        sock.shutdown(socket.SHUT_WR)
        answer = sock.recv(64)
        took = time.perf_counter() - started
    assert int(answer) == size, answer
    return size / took / 1e6


def latency(ip: str, port: int, rounds: int = 2000) -> dict[str, float]:
    times = []
    with socket.create_connection((ip, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(b"e")
        for _ in range(rounds):
            started = time.perf_counter()
            sock.sendall(b"ping")
            got = b""
            while len(got) < 4:
                got += sock.recv(4)
            times.append((time.perf_counter() - started) * 1e6)
    times.sort()
    return {"p50_us": round(times[len(times) // 2], 1), "p95_us": round(times[int(len(times) * 0.95)], 1)}


def connect_time(ip: str, port: int, rounds: int = 300) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        with socket.create_connection((ip, port)) as sock:
            sock.sendall(b"e1")
            sock.recv(1)
        times.append((time.perf_counter() - started) * 1e6)
    return round(statistics.median(times), 1)


def main() -> None:
    size = int(sys.argv[1] if len(sys.argv) > 1 else 1024) << 20
    server = Server()
    driver = RelayingDriver(server)  # type: ignore[arg-type]
    port = free_port("tcp", "127.0.0.1")
    started = time.perf_counter()
    driver.add_forward(PortForward("tcp", "127.0.0.1", port, 80))
    add_ms = (time.perf_counter() - started) * 1e3
    result: dict[str, object] = {"bytes": size, "relay_add_ms": round(add_ms, 2)}
    for label, ip in (("direct 127.0.0.1", "127.0.0.1"), ("relay [::1]", "::1")):
        runs = [throughput(ip, port, size) for _ in range(3)]
        result[label] = {
            "MB_s_median": round(statistics.median(runs), 1),
            "MB_s_min": round(min(runs), 1),
            "MB_s_max": round(max(runs), 1),
            **latency(ip, port),
            "connect_roundtrip_us": connect_time(ip, port),
        }
    started = time.perf_counter()
    driver.remove_forward(PortForward("tcp", "127.0.0.1", port, 80))
    result["relay_remove_ms"] = round((time.perf_counter() - started) * 1e3, 2)
    driver.stop_relays()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
