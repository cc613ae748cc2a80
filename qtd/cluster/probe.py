"""Measure a shaped link for real: push N bytes over TCP from one machine's namespace to another's.

    python -m qtd.cluster.probe sink PORT            # prints "ready", then one JSON line per transfer
    python -m qtd.cluster.probe send HOST PORT BYTES # prints {"bytes": N, "seconds": s}

The sender's clock runs from its first byte until the sink confirms it has read the last one, so the
rate is TCP goodput (the link rate less TCP/IP headers, about 3%).
"""

from __future__ import annotations

import json
import socket
import struct
import sys
import time

CHUNK = 1 << 16


def sink(port: int) -> None:
    with socket.create_server(("0.0.0.0", port)) as server:
        print("ready", flush=True)
        server.settimeout(60)
        conn, _ = server.accept()
        with conn:
            conn.settimeout(120)
            (size,) = struct.unpack("!Q", _read_exactly(conn, 8))
            left = size
            while left:
                data = conn.recv(min(CHUNK, left))
                if not data:
                    raise ConnectionError("the sender left before the end")
                left -= len(data)
            conn.sendall(b"k")
    print(json.dumps({"bytes": size}), flush=True)


def send(host: str, port: int, size: int) -> None:
    payload = b"\0" * CHUNK
    with socket.create_connection((host, port), timeout=30) as conn:
        conn.settimeout(120)
        start = time.monotonic()
        conn.sendall(struct.pack("!Q", size))
        left = size
        while left:
            n = min(CHUNK, left)
            conn.sendall(payload[:n])
            left -= n
        if _read_exactly(conn, 1) != b"k":
            raise ConnectionError("the sink did not confirm")
        seconds = time.monotonic() - start
    print(json.dumps({"bytes": size, "seconds": seconds}), flush=True)


def _read_exactly(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        more = conn.recv(n - len(data))
        if not more:
            raise ConnectionError("connection closed early")
        data += more
    return data


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "sink":
        sink(int(argv[1]))
    elif len(argv) == 4 and argv[0] == "send":
        send(argv[1], int(argv[2]), int(argv[3]))
    else:
        sys.exit("usage: python -m qtd.cluster.probe sink PORT | send HOST PORT BYTES")


if __name__ == "__main__":
    main(sys.argv[1:])
