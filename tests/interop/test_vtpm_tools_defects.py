"""Regression tests for what tpm2-tools 5.4's integration suite (test/integration/tests/*.sh) found,
each step run with the real `tpm2` tool against our vTPM and against swtpm.

- hmac, import: `tpm2 hmac` over a sequence (stdin, or more than one buffer) answered session(1)
  authorization failure: the cpHash named the sequence object by its handle, but a sequence
  object's Name is the Empty Buffer.
- pcrevent: EventSequenceComplete failed the same way.
- nv: `tpm2 nvwrite -i -` to a PIN Fail / PIN Pass index answered inconsistent attributes.
- policycphash: `tpm2 nvundefine -C p` of an owner index answered NV access authorization fails.
- policynv: the signed comparisons of PolicyNV disagreed with the reference implementation.
- create: `tpm2 create -G keyedhash` (sign and decrypt, no scheme) answered parameter(2)
  inconsistent attributes.
- PolicyTicket with a ticket naming TPM_RH_LOCKOUT or no hierarchy answered TPM_RC_FAILURE.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from pathlib import Path

import pytest
from support.peers import Pair, Peer, tools_installed

from vtpm import wire
from vtpm.constants import CC, RC, RH, ST

pytestmark = pytest.mark.skipif(not tools_installed(), reason="tpm2-tools are not installed")


def _on_both(p: Pair, steps) -> list:
    """Run ``steps(peer, workdir)`` on our vTPM and on swtpm; their results, ours first."""
    ours_dir, ref_dir = p.dirs()
    return [steps(p.ours, ours_dir), steps(p.ref, ref_dir)]


def test_pcrevent_of_a_large_file_goes_through_an_event_sequence(pair: Pair) -> None:
    data = os.urandom(2093)  # more than one buffer: HashSequenceStart, SequenceUpdate, EventSequenceComplete

    def steps(peer: Peer, cwd: Path) -> bytes:
        (cwd / "big.in").write_bytes(data)
        out = peer.tool("pcrevent", "big.in", cwd=cwd).stdout.decode()
        assert hashlib.sha256(data).hexdigest() in out
        peer.tool("pcrevent", "9", "big.in", cwd=cwd)
        return peer.tool("pcrread", "sha1:9+sha256:9", cwd=cwd).stdout

    ours, ref = _on_both(pair, steps)
    assert ours == ref


def test_hmac_over_a_sequence(pair: Pair) -> None:
    small, large = b"12345678\n", os.urandom(2093)

    def steps(peer: Peer, cwd: Path) -> tuple[bytes, bytes]:
        peer.tool("createprimary", "-Q", "-C", "e", "-g", "sha256", "-G", "rsa", "-c", "primary.ctx", cwd=cwd)
        peer.tool("create", "-Q", "-G", "hmac", "-u", "key.pub", "-r", "key.priv", "-C", "primary.ctx", cwd=cwd)
        peer.tool("load", "-Q", "-C", "primary.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx", cwd=cwd)
        peer.tool("evictcontrol", "-C", "o", "-c", "key.ctx", "-o", "key.handle", cwd=cwd)
        from_stdin = peer.tool("hmac", "-c", "key.handle", "-o", "a.out", cwd=cwd, stdin=small)
        (cwd / "large").write_bytes(large)
        peer.tool("hmac", "-c", "key.ctx", "-o", "b.out", "large", cwd=cwd)
        peer.tool("evictcontrol", "-C", "o", "-c", "key.handle", cwd=cwd)
        assert from_stdin.returncode == 0
        return (cwd / "a.out").read_bytes(), (cwd / "b.out").read_bytes()

    (a1, b1), (a2, b2) = _on_both(pair, steps)
    assert len(a1) == len(b1) == 32 and len(a2) == len(b2) == 32


def test_hmac_with_an_imported_key_matches_openssl_hmac(pair: Pair) -> None:
    key = os.urandom(64)

    def steps(peer: Peer, cwd: Path) -> bytes:
        (cwd / "hmackey").write_bytes(key)
        peer.tool("createprimary", "-Q", "-G", "rsa2048:aes128cfb", "-g", "sha256", "-C", "o", "-c", "parent.ctx",
                  cwd=cwd)
        peer.tool("import", "-C", "parent.ctx", "-G", "hmac", "-i", "hmackey", "-u", "hmac.pub", "-r", "hmac.priv",
                  cwd=cwd)
        peer.tool("load", "-C", "parent.ctx", "-u", "hmac.pub", "-r", "hmac.priv", "-c", "hmac.ctx", cwd=cwd)
        peer.tool("hmac", "-g", "sha256", "-c", "hmac.ctx", "-o", "out", cwd=cwd, stdin=b"test data")
        return (cwd / "out").read_bytes()

    ours, ref = _on_both(pair, steps)
    assert ours == ref == hmac.new(key, b"test data", "sha256").digest()


def test_nvwrite_of_pin_indices(pair: Pair) -> None:
    index = "0x1500018"
    pin = bytes.fromhex("000004D20000162E")  # pinCount 1234, pinLimit 5678

    def steps(peer: Peer, cwd: Path) -> list[bytes]:
        shown = []
        for kind in ("pinfail", "pinpass"):
            peer.tool("nvdefine", "-C", "o", "-g", "sha256", "-a", f"nt={kind}|ownerread|ownerwrite|no_da", index,
                      cwd=cwd)
            peer.tool("nvwrite", "-C", "o", "-i", "-", index, cwd=cwd, stdin=pin)
            shown.append(peer.tool("nvread", "-C", "o", index, "--print-yaml", cwd=cwd).stdout)
            peer.tool("nvundefine", "-C", "o", index, cwd=cwd)
        return shown

    ours, ref = _on_both(pair, steps)
    assert ours == ref
    assert ours[0].decode().split() == ["pinfail:", "pinCount:", "1234", "pinLimit:", "5678"]


def test_platform_undefines_an_owner_index(pair: Pair) -> None:
    def steps(peer: Peer, cwd: Path) -> None:
        peer.tool("nvdefine", "2", cwd=cwd)
        peer.tool("nvundefine", "-C", "p", "2", cwd=cwd)

    _on_both(pair, steps)


POLICYNV_CASES = [("eq", 0x81), ("neq", 0x80), ("sgt", 0x82), ("ugt", 0x80), ("slt", 0x80), ("ult", 0x82),
                  ("sge", 0x82), ("sge", 0x81), ("uge", 0x80), ("uge", 0x81), ("sle", 0x80), ("sle", 0x81),
                  ("ule", 0x82), ("ule", 0x81), ("bs", 0x81), ("bc", 0x7E),
                  # and some that fail on both
                  ("sgt", 0x7F), ("sgt", 0x01), ("eq", 0x80), ("bs", 0x02)]


def test_policynv_comparisons_as_the_reference(pair: Pair) -> None:
    index = "0x01500001"

    def steps(peer: Peer, cwd: Path) -> list[int]:
        peer.tool("nvdefine", "-C", "o", "-p", "nvpass", index, "-a", "authread|authwrite", "-s", "2", cwd=cwd)
        peer.tool("nvwrite", "-P", "nvpass", "-i-", index, cwd=cwd, stdin=b"\x81")
        results = []
        for op, operand in POLICYNV_CASES:
            peer.tool("startauthsession", "-S", "session.ctx", "--policy-session", cwd=cwd)
            run = peer.tool("policynv", "-S", "session.ctx", "-i-", "-P", "nvpass", index, op, cwd=cwd,
                            stdin=bytes([operand]), check=False)
            results.append(run.returncode)
            peer.tool("flushcontext", "session.ctx", cwd=cwd)
        return results

    ours, ref = _on_both(pair, steps)
    assert ours == ref
    assert ours == [0] * 16 + [1] * 4


@pytest.mark.parametrize("name_alg", ["sha1", "sha256", "sha384", "sha512"])
def test_create_every_algorithm_under_an_rsa_parent(pair: Pair, name_alg: str) -> None:
    def steps(peer: Peer, cwd: Path) -> list[str]:
        peer.tool("createprimary", "-Q", "-C", "o", "-g", "sha1", "-G", "rsa", "-c", "context.out", cwd=cwd)
        kinds = []
        for alg in ("rsa", "keyedhash", "ecc", "aes"):
            out = peer.tool("create", "-C", "context.out", "-g", name_alg, "-G", alg, "-u", "key.pub", "-r",
                            "key.priv", cwd=cwd).stdout.decode()
            kinds.append([line for line in out.splitlines() if line.startswith("  value: ")][1])
        return kinds

    ours, ref = _on_both(pair, steps)
    assert ours == ref  # the same attributes for every kind of object


def test_policyticket_with_no_hierarchy_behind_it(pair: Pair) -> None:
    """A ticket's hierarchy is a TPMI_RH_HIERARCHY+: TPM_RH_LOCKOUT and unknown handles are
    TPM_RC_VALUE for the ticket (parameter 5), not an internal failure."""
    for hierarchy in (RH.LOCKOUT, 0x40000099, RH.OWNER, RH.NULL):
        params = wire.tpm2b(bytes(32)) + wire.tpm2b(b"") + bytes([1]) + b"\x00\x10\x00\x0b"  # a policy session
        sessions = [wire.parse_response(r).body[:4] for r in pair.both(
            wire.build_command(CC.StartAuthSession, [RH.NULL, RH.NULL], params))]
        assert sessions[0] == sessions[1]
        ticket = (wire.tpm2b(bytes(8)) + wire.tpm2b(b"") + wire.tpm2b(b"") + wire.tpm2b(b"\x00\x0b" + bytes(32))
                  + ST.AUTH_SECRET.to_bytes(2, "big") + hierarchy.to_bytes(4, "big") + wire.tpm2b(bytes(32)))
        ours, ref = pair.both(wire.build_command(CC.PolicyTicket, [int.from_bytes(sessions[0], "big")], ticket))
        assert ours == ref, (hex(hierarchy), ours.hex(), ref.hex())
        if hierarchy in (RH.LOCKOUT, 0x40000099):
            assert wire.response_code(ours) == RC.VALUE | 0x40 | 0x500
        pair.both(wire.flush_context(int.from_bytes(sessions[0], "big")))
