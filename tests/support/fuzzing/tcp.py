"""Mutated commands, garbage framing, half commands and disconnects against a served vTPM (swtpm protocol, TCP).

The served TPM is prepared like the in-process one (``seeds.build_snapshot``
and ``seeds.prepare_episode`` over the socket), then every case sends bytes
and reads exactly the responses the server's framing owes for them: the
server reads a 10-byte header, then commandSize - 10 bytes; a size outside
10..64 KiB gets one TPM_RC_COMMAND_SIZE response and the connection is
dropped; a frame that is not complete yet gets nothing until it is. So the
client knows, for every case, how many responses to expect and whether the
connection is still usable. Each response is checked like the in-process
ones. After every case the server must answer a valid command (GetRandom),
on the same connection if it is still in step, else on a new one.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from vtpm import wire
from vtpm.constants import RC
from vtpm.core import COMMANDS
from vtpm.transport import SwtpmControl, TransportError

from support.fuzzing import seeds
from support.fuzzing.campaign import Deck, Stopwatch
from support.fuzzing.frames import Mutator, check_response, rc_class
from support.fuzzing.tpm import command_name

MAX_WIRE_COMMAND = 64 * 1024  # vtpm.server.sockets: larger sizes are refused without reading the body
PROBE = wire.get_random(8)
MAX_KEPT = 25


class Closed(Exception):
    """The server closed the connection (or it timed out) before the expected response."""


def expected_framing(data: bytes) -> tuple[int, str]:
    """(responses the server owes for ``data``, what becomes of the connection: "open", "closed", "pending")."""
    offset, responses = 0, 0
    while len(data) - offset >= 10:
        size = int.from_bytes(data[offset + 2 : offset + 6], "big")
        if size < 10 or size > MAX_WIRE_COMMAND:
            return responses + 1, "closed"
        if len(data) - offset < size:
            return responses, "pending"
        offset += size
        responses += 1
    return responses, "open" if offset == len(data) else "pending"


@dataclass
class TcpFinding:
    kind: str  # malformed, crash, framing, unresponsive
    case: str
    detail: str
    input_hex: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class TcpReport:
    seed: int
    cases: int = 0
    commands: int = 0  # mutated commands among the cases (framed as the server reads them)
    per_case: Counter = field(default_factory=Counter)
    per_command: Counter = field(default_factory=Counter)
    responses: int = 0
    response_classes: Counter = field(default_factory=Counter)
    reconnects: int = 0
    probes: int = 0
    locality_changes: int = 0
    crashes: int = 0
    malformed: int = 0
    framing: int = 0
    unresponsive: int = 0
    findings: list[TcpFinding] = field(default_factory=list)
    elapsed: float = 0.0
    prepare_seconds: float = 0.0

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.malformed or self.framing or self.unresponsive)

    def to_dict(self) -> dict[str, Any]:
        return {
            "seed": self.seed, "cases": self.cases, "commands": self.commands,
            "per_case": dict(sorted(self.per_case.items())), "per_command": dict(sorted(self.per_command.items())),
            "responses": self.responses, "response_classes": dict(self.response_classes.most_common()),
            "reconnects": self.reconnects, "probes": self.probes, "locality_changes": self.locality_changes,
            "crashes": self.crashes, "malformed": self.malformed, "framing": self.framing,
            "unresponsive": self.unresponsive, "elapsed_seconds": round(self.elapsed, 2),
            "prepare_seconds": round(self.prepare_seconds, 2), "findings": [f.to_dict() for f in self.findings],
        }


class Connection:
    def __init__(self, host: str, port: int, timeout: float) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            raise Closed(f"send failed: {exc}") from None

    def _exact(self, n: int) -> bytes:
        parts, left = [], n
        while left:
            try:
                chunk = self.sock.recv(left)
            except OSError as exc:  # a timeout included
                raise Closed(f"{type(exc).__name__} after {n - left} of {n} bytes") from None
            if not chunk:
                raise Closed(f"connection closed after {n - left} of {n} bytes")
            parts.append(chunk)
            left -= len(chunk)
        return b"".join(parts)

    def response(self) -> bytes:
        header = self._exact(10)
        size = int.from_bytes(header[2:6], "big")
        if size < 10 or size > 65536:
            return header  # malformed: the checker says so
        return header + self._exact(size - 10)

    def closed_by_peer(self, wait: float = 5.0) -> bool:
        """The server hung up: end of stream, or a reset (it closed with our unread bytes still queued)."""
        self.sock.settimeout(wait)
        try:
            return self.sock.recv(1) == b""
        except (ConnectionResetError, BrokenPipeError):
            return True
        except OSError:  # a timeout: still open
            return False

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


class TcpCampaign:
    def __init__(self, port: int, cases: int, seed: int, *, host: str = "127.0.0.1", timeout: float = 10.0,
                 rsa_bits: int = 1024) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self.cases = cases
        self.rng = random.Random(seed)
        self.report = TcpReport(seed)
        self.rsa_bits = rsa_bits
        self.implemented = sorted(COMMANDS)
        self.mutator = Mutator(self.rng, self.implemented)
        self.conn: Connection | None = None

    # --------------------------------------------------------------- connection

    def _connect(self) -> Connection:
        if self.conn is None:
            self.conn = Connection(self.host, self.port, self.timeout)
        return self.conn

    def _drop(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None
            self.report.reconnects += 1

    def _transact(self, command: bytes) -> bytes:
        conn = self._connect()
        conn.send(command)
        return conn.response()

    # --------------------------------------------------------------- findings

    def _keep(self, kind: str, case: str, detail: str, data: bytes) -> None:
        setattr(self.report, kind, getattr(self.report, kind) + 1)
        if len(self.report.findings) < MAX_KEPT:
            self.report.findings.append(TcpFinding(kind, case, detail, data[:4096].hex()))

    def _check(self, case: str, command: bytes, response: bytes) -> None:
        self.report.responses += 1
        self.report.response_classes[rc_class(response, command)] += 1
        problem = check_response(command, response)
        if problem is not None:
            kind = "crashes" if problem[0] == "crash" else "malformed"
            self._keep(kind, case, problem[1], command)

    # --------------------------------------------------------------- the campaign

    def run(self) -> TcpReport:
        with Stopwatch(self.report) as clock:
            try:
                art = seeds.build_snapshot(self._transact, self.rsa_bits)
                ep = seeds.prepare_episode(self._transact, art, self.rng, startup=False)
                self.ctx = seeds.SeedContext(art, ep, self.rng, None)
                self.mutator.known_handles = tuple(seeds.PERSISTENT) + seeds.NV_INDICES + tuple(
                    h for h in (ep.child, ep.sequence, ep.hmac_session, ep.policy_session) if h is not None)
                clock.prepared()
                deck = Deck(self.rng, self.implemented)
                cases = ("mutated",) * 12 + ("garbage", "half", "split", "pipelined", "disconnect", "bad-size",
                                             "locality")
                for _ in range(self.cases):
                    deck.refill()  # a case draws from this round only (``_pipelined`` takes what is left)
                    case = self.rng.choice(cases)
                    self.report.cases += 1
                    self.report.per_case[case] += 1
                    getattr(self, "_" + case.replace("-", "_"))(deck)
                    if not self._probe(case):
                        break
            finally:
                self._drop()
        return self.report

    def _seed(self, deck: Deck[int]) -> tuple[bytes, str]:
        code = deck.draw()
        frame = seeds.SEEDS[code](self.ctx)
        for command in frame.prelude:
            self._transact(command)
        data, _ = self.mutator.mutate(frame)
        self.report.commands += 1
        self.report.per_command[command_name(code)] += 1
        return data, command_name(code)

    def _send_expecting(self, case: str, data: bytes, chunks: int = 1) -> None:
        """Send ``data`` (in ``chunks`` pieces), read what the framing owes, keep the connection only if in step."""
        conn = self._connect()
        responses, after = expected_framing(data)
        try:
            if chunks == 1:
                conn.send(data)
            else:
                cuts = sorted(self.rng.sample(range(1, len(data)), min(chunks - 1, len(data) - 1)))
                for a, b in zip([0, *cuts], [*cuts, len(data)]):
                    conn.send(data[a:b])
                    time.sleep(0.002)
            offset = 0
            for _ in range(responses):
                size = int.from_bytes(data[offset + 2 : offset + 6], "big")
                command = data[offset : offset + max(10, size)]
                offset += size if 10 <= size <= MAX_WIRE_COMMAND else len(data)
                response = conn.response()
                self._check(case, command, response)
        except Closed as exc:
            self._keep("framing", case, f"expected {responses} response(s): {exc}", data)
            self._drop()
            return
        if after == "closed":
            if not conn.closed_by_peer():
                self._keep("framing", case, "the server kept a connection whose stream it refused", data)
            self._drop()
        elif after == "pending":
            self._drop()  # the server waits for the rest of a frame: hang up on it, as a vanishing client does

    # --------------------------------------------------------------- cases

    def _mutated(self, deck: Deck[int]) -> None:
        data, _ = self._seed(deck)
        self._send_expecting("mutated", data)

    def _garbage(self, deck: Deck[int]) -> None:
        rng = self.rng
        data = rng.randbytes(rng.choice((1, 3, 9, 10, 11, 64, 300)))
        if rng.random() < 0.5 and len(data) >= 6:
            data = data[:2] + len(data).to_bytes(4, "big") + data[6:]  # garbage with a consistent size
        self._send_expecting("garbage", data)

    def _half(self, deck: Deck[int]) -> None:
        data, _ = self._seed(deck)
        cut = self.rng.randrange(1, max(2, len(data)))
        self._send_expecting("half", data[:cut])
        self._drop()

    def _split(self, deck: Deck[int]) -> None:
        data, _ = self._seed(deck)
        # only a stream the server reads to the end is split: one it refuses is reset while the rest is on its way
        chunks = self.rng.choice((2, 3, 5)) if expected_framing(data)[1] == "open" else 1
        self._send_expecting("split", data, chunks=chunks)

    def _pipelined(self, deck: Deck[int]) -> None:
        data = b"".join(self._seed(deck)[0] for _ in range(min(len(deck), self.rng.choice((2, 3)))) or [PROBE])
        self._send_expecting("pipelined", data)

    def _disconnect(self, deck: Deck[int]) -> None:
        conn = self._connect()
        conn.send(self.rng.choice((b"", PROBE[:4], PROBE[:10], PROBE[:-1])))
        self._drop()

    def _bad_size(self, deck: Deck[int]) -> None:
        size = self.rng.choice((0, 1, 9, MAX_WIRE_COMMAND + 1, 0xFFFFFFFF, 0x7FFFFFFF))
        self._send_expecting("bad-size", b"\x80\x01" + size.to_bytes(4, "big") + b"\x00\x00\x01\x7b" + bytes(6))

    def _locality(self, deck: Deck[int]) -> None:
        locality = self.rng.choice((0, 0, 1, 2, 3, 4, 5, 255))
        try:
            result = SwtpmControl(port=self.port + 1, host=self.host, timeout=self.timeout).set_locality(locality)
        except TransportError as exc:
            self._keep("unresponsive", "locality", f"the control channel did not answer: {exc}", bytes([locality]))
            return
        self.report.locality_changes += 1
        if (result == 0) != (locality <= 4):
            self._keep("framing", "locality", f"CMD_SET_LOCALITY({locality}) answered {result}", bytes([locality]))

    def _probe(self, case: str) -> bool:
        """The server answers a valid command: on this connection, or on a new one if this one is gone."""
        self.report.probes += 1
        for attempt in range(2):
            try:
                response = self._transact(PROBE)
                if wire.response_code(response) == RC.SUCCESS and check_response(PROBE, response) is None:
                    return True
                self._keep("unresponsive", case, f"GetRandom answered {response[:16].hex()}", PROBE)
                return True
            except (Closed, OSError) as exc:
                self._drop()
                if attempt:
                    self._keep("unresponsive", case, f"no answer to GetRandom after the case: {exc}", PROBE)
                    return False
        return False


def run_tcp_campaign(port: int, cases: int, seed: int, **options: Any) -> TcpReport:
    return TcpCampaign(port, cases, seed, **options).run()
