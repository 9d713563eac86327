"""tpm2-tools 5.4 with the commands the vTPM gained, against our vTPM and swtpm side by side:
`tpm2 getcap commands`, geteccparameters / ecephemeral / commit / zgen2phase (the flow of the
tools' ecc.sh), policyauthorizenv and policytemplate (abrmd_policyauthorizenv.sh,
abrmd_policytemplate.sh), setcommandauditstatus / getcommandauditdigest (commandaudit.sh) and
getsessionauditdigest (sessionaudit.sh). Each step runs on both TPMs; outputs that do not depend
on a TPM's own keys or randomness must be equal, the others are checked for what they mean.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from support.peers import Pair, Peer, tools_installed

from vtpm import ecmath
from vtpm.constants import ECC_CURVE

pytestmark = pytest.mark.skipif(not tools_installed(), reason="tpm2-tools are not installed")
P256 = ecmath.curve(ECC_CURVE.NIST_P256)


def _on_both(p: Pair, steps) -> list:
    ours_dir, ref_dir = p.dirs()
    return [steps(p.ours, ours_dir), steps(p.ref, ref_dir)]


def _blocks(yaml: str) -> dict[str, str]:
    """`tpm2 getcap commands`: each command's name (or code) and its attribute lines."""
    blocks: dict[str, str] = {}
    name = ""
    for line in yaml.splitlines():
        if line and not line.startswith(" "):
            name = line.rstrip(":")
            blocks[name] = ""
        elif name:
            blocks[name] += line + "\n"
    return blocks


def test_getcap_commands_lists_every_command_swtpm_lists(pair: Pair) -> None:
    ours, ref = _on_both(pair, lambda peer, cwd: _blocks(peer.tool("getcap", "commands", cwd=cwd).stdout.decode()))
    assert len(ref) >= 109
    assert set(ref) <= set(ours), sorted(set(ref) - set(ours))
    assert {name: ours[name] for name in ref} == ref  # the same TPMA_CC for each


def _point(data: bytes) -> tuple[int, int]:
    """A TPM2B_ECC_POINT file as tpm2-tools write it."""
    body = data[2:]
    xs = int.from_bytes(body[:2], "big")
    ys = int.from_bytes(body[2 + xs : 4 + xs], "big")
    return int.from_bytes(body[2 : 2 + xs], "big"), int.from_bytes(body[4 + xs : 4 + xs + ys], "big")


def test_ecc_parameters_ephemeral_commit_and_zgen2phase(pair: Pair) -> None:
    def steps(peer: Peer, cwd: Path) -> dict[str, bytes]:
        t = lambda *args: peer.tool(*args, cwd=cwd)  # noqa: E731
        t("geteccparameters", "ecc256", "-o", "ecc.params")
        t("ecephemeral", "-u", "pass1_ecc.q", "-t", "pass1_ecc.ctr", "ecc256")
        t("ecephemeral", "-u", "pass2_ecc.q", "-t", "pass2_ecc.ctr", "ecc256")
        t("createprimary", "-C", "o", "-c", "prim.ctx", "-Q")
        t("create", "-C", "prim.ctx", "-c", "commit_key.ctx", "-u", "commit_key.pub", "-r", "commit_key.priv",
          "-G", "ecc256:ecdaa")
        t("commit", "-c", "commit_key.ctx", "-t", "commit.ctr", "--eccpoint-K", "K.bin", "--eccpoint-L", "L.bin",
          "-u", "E.bin")
        t("ecdhkeygen", "-u", "ecdaa.pub", "-o", "ecdaa.priv", "-c", "commit_key.ctx")
        t("create", "-C", "prim.ctx", "-c", "ecdh_key.ctx", "-u", "ecdh_key.pub", "-r", "ecdh_key.priv",
          "-G", "ecc256:ecdh")
        t("ecdhkeygen", "-u", "ecdh.pub", "-o", "ecdh.priv", "-c", "ecdh_key.ctx")
        t("ecdhzgen", "-u", "ecdh.pub", "-o", "zgen.dat", "-c", "ecdh_key.ctx")
        for n, (q, counter) in enumerate((("pass1_ecc.q", "0"), ("pass2_ecc.q", "1"), ("E.bin", "2")), 1):
            t("zgen2phase", "-c", "ecdh_key.ctx", "--static-public", "ecdh.pub", "--ephemeral-public", q,
              "-t", counter, "--output-Z1", f"pass{n}.z1", "--output-Z2", f"pass{n}.z2")
        reuse = peer.tool("zgen2phase", "-c", "ecdh_key.ctx", "--static-public", "ecdh.pub", "--ephemeral-public",
                          "E.bin", "-t", "2", "--output-Z1", "x.z1", "--output-Z2", "x.z2", cwd=cwd, check=False)
        assert reuse.returncode != 0  # a commitment is used once
        return {name: (cwd / name).read_bytes() for name in (
            "ecc.params", "pass1_ecc.ctr", "pass2_ecc.ctr", "commit.ctr", "pass1_ecc.q", "pass2_ecc.q", "E.bin",
            "K.bin", "L.bin", "zgen.dat", "ecdh.priv", "pass1.z1", "pass2.z1", "pass3.z1", "pass1.z2",
            "pass2.z2", "pass3.z2")}

    ours, ref = _on_both(pair, steps)
    assert ours["ecc.params"] == ref["ecc.params"]
    for side in (ours, ref):
        assert (side["pass1_ecc.ctr"], side["pass2_ecc.ctr"], side["commit.ctr"]) == (b"\0\0", b"\0\1", b"\0\2")
        assert side["zgen.dat"] == side["ecdh.priv"]  # ECDH_ZGen recovers ECDH_KeyGen's Z
        # Z1 = [dsA]QsB does not depend on the ephemeral key, and equals ECDH_ZGen of the same point
        assert side["pass1.z1"] == side["pass2.z1"] == side["pass3.z1"] == side["zgen.dat"]
        assert len({side["pass1.z2"], side["pass2.z2"], side["pass3.z2"]}) == 3
        for name in ("pass1_ecc.q", "pass2_ecc.q", "E.bin", "pass1.z1", "pass1.z2"):
            assert P256.on_curve(_point(side[name])), name
        assert side["K.bin"][:2] == side["L.bin"][:2] == b"\x00\x04"  # no P2: K and L are empty points


def test_policyauthorizenv_unseals_with_the_policy_in_the_index(pair: Pair) -> None:
    index = "0x01500001"

    def steps(peer: Peer, cwd: Path) -> tuple[bytes, bytes, bytes]:
        t = lambda *args, **kw: peer.tool(*args, cwd=cwd, **kw)  # noqa: E731
        t("clear")
        t("nvdefine", "-C", "o", "-p", "nvpass", index, "-a", "authread|authwrite", "-s", "34")
        t("startauthsession", "-S", "session.ctx")
        t("policypassword", "-S", "session.ctx", "-L", "policy.pass")
        t("flushcontext", "session.ctx")
        t("nvwrite", "-C", index, "-P", "nvpass", index, "-i-", stdin=b"\x00\x0b" + (cwd / "policy.pass").read_bytes())
        t("startauthsession", "-S", "session.ctx")
        t("policyauthorizenv", "-S", "session.ctx", "-C", index, "-P", "nvpass", "-L", "authorizenv.policy", index)
        t("flushcontext", "session.ctx")
        t("createprimary", "-C", "o", "-c", "prim.ctx")
        t("create", "-C", "prim.ctx", "-u", "key.pub", "-r", "key.priv", "-a", "fixedtpm|fixedparent|adminwithpolicy",
          "-L", "authorizenv.policy", "-i-", stdin=b"secretdata\n")
        t("load", "-C", "prim.ctx", "-u", "key.pub", "-r", "key.priv", "-c", "key.ctx")
        t("startauthsession", "-S", "session.ctx", "--policy-session")
        t("policypassword", "-S", "session.ctx")
        t("policyauthorizenv", "-S", "session.ctx", "-C", index, "-P", "nvpass", index)
        secret = t("unseal", "-c", "key.ctx", "-p", "session:session.ctx").stdout
        t("flushcontext", "session.ctx")
        # a policy the index does not hold is refused
        t("startauthsession", "-S", "session.ctx", "--policy-session")
        t("policycommandcode", "-S", "session.ctx", "TPM2_CC_Unseal")
        refused = t("policyauthorizenv", "-S", "session.ctx", "-C", index, "-P", "nvpass", index, check=False)
        t("flushcontext", "session.ctx")
        assert refused.returncode != 0
        return (cwd / "policy.pass").read_bytes(), (cwd / "authorizenv.policy").read_bytes(), secret

    ours, ref = _on_both(pair, steps)
    assert ours[2] == ref[2] == b"secretdata\n"
    assert ours[0] == ref[0]
    # the digests name the index, whose Name is the same on both TPMs
    assert ours[1] == ref[1]


def test_policytemplate_restricts_createprimary(pair: Pair) -> None:
    def steps(peer: Peer, cwd: Path) -> bytes:
        t = lambda *args, **kw: peer.tool(*args, cwd=cwd, **kw)  # noqa: E731
        t("createprimary", "-C", "o", "-c", "prim.ctx", "--template-data", "template.data")
        (cwd / "template.hash").write_bytes(hashlib.sha256((cwd / "template.data").read_bytes()).digest())
        t("startauthsession", "-S", "session.ctx", "-g", "sha256")
        t("policytemplate", "-S", "session.ctx", "-L", "policy.template", "--template-hash", "template.hash")
        t("flushcontext", "session.ctx")
        t("setprimarypolicy", "-C", "o", "-g", "sha256", "-L", "policy.template")
        t("startauthsession", "-S", "session.ctx", "-g", "sha256", "--policy-session")
        t("policytemplate", "-S", "session.ctx", "--template-hash", "template.hash")
        t("createprimary", "-C", "o", "-c", "prim2.ctx", "-P", "session:session.ctx")
        t("flushcontext", "session.ctx")
        t("startauthsession", "-S", "session.ctx", "-g", "sha256", "--policy-session")
        t("policytemplate", "-S", "session.ctx", "--template-hash", "template.hash")
        other = t("createprimary", "-C", "o", "-G", "ecc", "-c", "prim3.ctx", "-P", "session:session.ctx", check=False)
        t("flushcontext", "session.ctx")
        assert other.returncode != 0
        return (cwd / "policy.template").read_bytes()

    ours, ref = _on_both(pair, steps)
    assert ours == ref


def test_command_audit_with_the_tools(pair: Pair) -> None:
    def counter(peer: Peer, cwd: Path) -> int:
        out = peer.tool("getcap", "properties-variable", cwd=cwd).stdout.decode()
        return int(re.search(r"TPM2_PT_AUDIT_COUNTER_1:\s*(0x[0-9a-fA-F]+)", out).group(1), 16)

    def steps(peer: Peer, cwd: Path) -> list:
        t = lambda *args: peer.tool(*args, cwd=cwd)  # noqa: E731
        seen = []
        t("clear")
        seen.append(counter(peer, cwd))
        t("setcommandauditstatus", "-g", "sha256")
        seen.append(counter(peer, cwd))
        t("createprimary", "-C", "o", "-c", "prim.ctx")
        t("create", "-C", "prim.ctx", "-c", "signing_key.ctx", "-u", "signing_key.pub", "-r", "signing_key.priv")
        for change in ((), ("TPM2_CC_GetRandom",), ("--clear-list", "TPM2_CC_GetRandom")):
            if change:
                t("setcommandauditstatus", *change)
            t("getcommandauditdigest", "-g", "sha256", "-f", "plain", "-m", "att.data", "-s", "att.sig",
              "-c", "signing_key.ctx")
            seen.append((cwd / "att.data").read_bytes()[-32:])
        seen.append(counter(peer, cwd))
        return seen

    ours, ref = _on_both(pair, steps)
    assert ours == ref
    set_status, get_random = bytes.fromhex("00000140"), bytes.fromhex("0000017B")
    assert ours[2] == ours[4] == hashlib.sha256(set_status).digest()
    assert ours[3] == hashlib.sha256(set_status + get_random).digest()


@pytest.mark.parametrize("command", [
    ("getrandom", "8"),
    ("nvreadpublic", "1"),
    ("nvincrement", "1"),
])
def test_session_audit_with_the_tools(pair: Pair, command: tuple[str, ...]) -> None:
    """digest = H(0...0 || cpHash || rpHash) of the one audited command, with the hashes the tool computed."""

    def steps(peer: Peer, cwd: Path) -> bytes:
        t = lambda *args: peer.tool(*args, cwd=cwd)  # noqa: E731
        t("clear")
        t("createprimary", "-Q", "-C", "e", "-c", "prim.ctx")
        t("create", "-Q", "-C", "prim.ctx", "-c", "signing_key.ctx", "-u", "signing_key.pub", "-r",
          "signing_key.priv")
        t("nvdefine", "1", "-a", "nt=counter|ownerread|authwrite")
        t("startauthsession", "-S", "session.ctx", "--audit-session")
        t(*command, "-S", "session.ctx", "--cphash", "cp.hash", "--rphash", "rp.hash")
        t("getsessionauditdigest", "-c", "signing_key.ctx", "-m", "att.data", "-s", "att.sig", "-S", "session.ctx")
        t("flushcontext", "session.ctx")
        cp, rp = (cwd / "cp.hash").read_bytes()[2:34], (cwd / "rp.hash").read_bytes()[2:34]
        digest = (cwd / "att.data").read_bytes()[-32:]
        assert digest == hashlib.sha256(bytes(32) + cp + rp).digest()
        return digest

    ours, ref = _on_both(pair, steps)
    if command[0] != "getrandom":  # the random bytes differ, and with them rpHash
        assert ours == ref
