"""Benchmark-only: the floor under any served durable write: a TCP server that makes one record durable per request.

For each TPM command frame it receives (read whole, by the size in its header)
it overwrites ``--record`` bytes of a preallocated, zero-filled, synced file
with one ``pwrite``, calls ``os.fdatasync``, and answers a fixed success
response (TPM_ST_NO_SESSIONS, 10 bytes). No TPM, no journal format, no
sealing: what a Python server pays on this machine for a socket round trip
(two scheduler wake-ups: the request, the sync's completion) around the same
write the journal makes. ``journal_latency.py`` times it in the same rounds
as `vtpm serve` and the 4 KiB fdatasync reference, so the report shows how
much of a served NV_Write the socket alone costs, whatever the server does.
It logs ``vtpm: serving on`` once listening (what the launchers wait for).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from pathlib import Path

HEADER = 10
RESPONSE = bytes.fromhex("80010000000a00000000")
FILE_SIZE = 1 << 22


def serve(port: int, path: Path, record: int) -> None:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.pwrite(fd, bytes(FILE_SIZE), 0)
    os.fsync(fd)  # allocated and sized: each request then overwrites data only, as the journal does
    listener = socket.create_server(("127.0.0.1", port))
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    print(f"vtpm: serving on 127.0.0.1:{port} (durable echo)", flush=True)
    payload = os.urandom(record)
    while True:
        conn, _ = listener.accept()
        with conn:
            answer_frames(conn, fd, payload, record)


def answer_frames(conn: socket.socket, fd: int, payload: bytes, record: int) -> None:
    """Until the peer closes: read a whole frame, make one record durable, answer."""
    buf, offset = b"", 0
    while True:
        while len(buf) < HEADER or len(buf) < int.from_bytes(buf[2:6], "big"):
            chunk = conn.recv(4096)
            if not chunk:
                return
            buf += chunk
        buf = buf[max(HEADER, int.from_bytes(buf[2:6], "big")):]
        os.pwrite(fd, payload, offset)
        offset = (offset + record) % (FILE_SIZE - record)
        os.fdatasync(fd)
        conn.sendall(RESPONSE)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--file", type=Path, required=True, help="the preallocated file written per request")
    parser.add_argument("--record", type=int, default=273, help="bytes written per request (an NV_Write record)")
    args = parser.parse_args()
    serve(args.port, args.file, args.record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
