"""The differential harness: the same raw TPM 2.0 commands to swtpm (libtpms) and to our vTPM.

Each step sends one command, byte for byte the same, to both servers over
persistent connections and compares the responses: byte-identical, or the
response code only where a step says so. Differences are recorded, not raised,
so that a test runs all of its steps and then lists every differing command
with both responses in hex (``assert_identical``). A test need not call it:
``verified`` (the fixtures' teardown) fails on whatever was recorded and not yet
reported. What a step accepts on purpose is never recorded: a different response
with the same code in a step with ``mode="rc"``, or a probe sent to one server
only with ``_send``.

TPM_RC_RETRY means "not executed, send it again"; TSS stacks resend such
commands, and so does the harness (at most MAX_RETRIES times per command)
unless a test sets ``resend_on_retry`` to False.

VTPM_DIFF_TRACE=1 (with pytest -s) prints every step's two responses.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest

from support.tpm_helpers import NoResponse, TpmConnection, ctrl_set_locality, describe_rc, response_code

if TYPE_CHECKING:
    from support.servers import TpmServer

TRACE = bool(os.environ.get("VTPM_DIFF_TRACE"))  # print every step's two responses (run with -s)
MAX_RETRIES = 3  # resends of a command answered with TPM_RC_RETRY
RC_RETRY = 0x922


def differing_bytes(a: bytes, b: bytes) -> str:
    """Where two responses differ, as byte offset ranges (and their lengths if those differ)."""
    ranges: list[list[int]] = []
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            if ranges and ranges[-1][1] == i - 1:
                ranges[-1][1] = i
            else:
                ranges.append([i, i])
    text = ", ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in ranges[:8])
    if len(ranges) > 8:
        text += ", ..."
    parts = [f"differing bytes {text}"] if ranges else []
    if len(a) != len(b):
        parts.append(f"lengths {len(a)} (vtpm) and {len(b)} (swtpm)")
    return "; ".join(parts)


@dataclass
class Difference:
    name: str
    command: bytes
    ours: bytes | str
    ref: bytes | str
    mode: str

    def render(self) -> str:
        def show(resp: bytes | str) -> str:
            if isinstance(resp, str):
                return resp
            return f"{resp.hex()}  ({describe_rc(response_code(resp))})"

        where = ""
        if isinstance(self.ours, bytes) and isinstance(self.ref, bytes):
            where = f", {differing_bytes(self.ours, self.ref)}"
        return (
            f"[{self.name}] {'response codes' if self.mode == 'rc' else 'responses'} differ{where}\n"
            f"  command: {self.command.hex()}\n"
            f"  vtpm   : {show(self.ours)}\n"
            f"  swtpm  : {show(self.ref)}"
        )


class Differential:
    """Sends each command to both TPMs over persistent connections and records every difference."""

    def __init__(self, ours: TpmServer, ref: TpmServer) -> None:
        self.ours, self.ref = ours, ref
        self.conns: dict[str, TpmConnection] = {}
        self.differences: list[Difference] = []
        self.reference_surprises: list[str] = []
        self.retries: list[str] = []
        self.resend_on_retry = True
        self.steps = 0
        self.reported = (0, 0)  # (differences, reference surprises) that assert_identical has looked at

    def _send_once(self, server: TpmServer, command: bytes, timeout: float) -> bytes | str:
        conn = self.conns.get(server.name)
        try:
            if conn is None:
                conn = self.conns[server.name] = server.connect(timeout=timeout)
            conn.sock.settimeout(timeout)
            return conn.transact(command)
        except (NoResponse, OSError) as exc:
            self._drop(server.name)
            return f"<no response: {exc}>"

    def _send(self, server: TpmServer, name: str, command: bytes, timeout: float) -> bytes | str:
        response = self._send_once(server, command, timeout)
        for _ in range(MAX_RETRIES):
            if not (self.resend_on_retry and isinstance(response, bytes) and response_code(response) == RC_RETRY):
                break
            self.retries.append(f"[{name}] {server.name} answered TPM_RC_RETRY; sent again")
            response = self._send_once(server, command, timeout)
        return response

    def _drop(self, name: str) -> None:
        conn = self.conns.pop(name, None)
        if conn is not None:
            conn.close()

    def check(self, name: str, command: bytes, *, mode: str = "bytes", ref_rc: int | None = None,
              fresh: bool = False, timeout: float = 10.0) -> bytes | str:
        """Send ``command`` to both; ``mode`` "bytes" (identical responses) or "rc" (identical codes).

        ``ref_rc`` is what swtpm is expected to answer: it guards the test itself (a step that
        does not reach the intended situation on the reference is reported separately).
        ``fresh`` sends the command on new connections that are closed afterwards, for
        commands that may leave a byte stream out of step.
        """
        self.steps += 1
        if fresh:
            self.close()
        ref = self._send(self.ref, name, command, timeout)
        ours = self._send(self.ours, name, command, timeout)
        if fresh:
            self.close()
        if TRACE:
            print(f"{name}\n  vtpm : {ours if isinstance(ours, str) else ours.hex()}"
                  f"\n  swtpm: {ref if isinstance(ref, str) else ref.hex()}")
        if mode == "rc":
            same = isinstance(ours, bytes) and isinstance(ref, bytes) and response_code(ours) == response_code(ref)
        else:
            same = ours == ref
        if not same:
            self.differences.append(Difference(name, command, ours, ref, mode))
        if ref_rc is not None and (not isinstance(ref, bytes) or response_code(ref) != ref_rc):
            got = ref if isinstance(ref, str) else f"0x{response_code(ref):03x} ({describe_rc(response_code(ref))})"
            self.reference_surprises.append(
                f"[{name}] swtpm answered {got}, the step expects 0x{ref_rc:03x} ({describe_rc(ref_rc)})"
            )
        return ref

    def set_locality(self, locality: int) -> None:
        for server in (self.ref, self.ours):
            result = ctrl_set_locality(server, locality)
            assert result == 0, f"{server.name}: CMD_SET_LOCALITY({locality}) failed with {result}"

    def assert_identical(self) -> None:
        """Fail listing every recorded difference and reference surprise, if there is any."""
        self.reported = (len(self.differences), len(self.reference_surprises))
        problems = []
        if self.reference_surprises:
            problems.append("the reference did not behave as the steps assume:\n  "
                            + "\n  ".join(self.reference_surprises))
        if self.differences:
            problems.append(
                f"{len(self.differences)} of {self.steps} commands differ between vtpm and swtpm:\n\n"
                + "\n\n".join(d.render() for d in self.differences)
            )
        if problems:
            if self.retries:
                problems.append("commands sent again after TPM_RC_RETRY:\n  " + "\n  ".join(self.retries))
            pytest.fail("\n\n".join(problems), pytrace=False)

    def assert_all_reported(self) -> None:
        """Fail if steps recorded a difference or surprise since the last assert_identical (or ever)."""
        if (len(self.differences), len(self.reference_surprises)) != self.reported:
            self.assert_identical()

    def close(self) -> None:
        for conn in self.conns.values():
            conn.close()
        self.conns.clear()


def verified(diff: Differential) -> Iterator[Differential]:
    """The body of a fixture: yields ``diff``, then closes its connections and fails on anything unreported."""
    try:
        yield diff
    finally:
        diff.close()
    diff.assert_all_reported()
