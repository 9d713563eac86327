"""Attestation through tpm2-tools: EK + AK, quote checked by tpm2_checkquote, credential
activation (with the TPM's MakeCredential and with tpm2-tools' own offline computation),
and a PCR-policy-sealed secret that unseals only while the PCR holds its value.

Refusals tried: a quote checked against another nonce, activation with a credential made
for another name, unsealing after the PCR changed.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from support.servers import start_vtpm
from support.tools import Tools, needs_tools

pytestmark = needs_tools("tpm2_createak")


@pytest.fixture
def t(tmp_path: Path):
    with start_vtpm(["--state", str(tmp_path / "state"), "--startup-clear"], tmp_path / "log") as tpm:
        yield Tools(tpm, tmp_path)


def _ek_and_ak(t: Tools, alg: str = "rsa") -> None:
    t("tpm2_createek", "-c", "ek.ctx", "-G", alg, "-u", "ek.pub")
    t("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", alg, "-g", "sha256", "-s",
      "rsassa" if alg == "rsa" else "ecdsa", "-u", "ak.pub", "-n", "ak.name", "-f", "pem")
    subprocess.run(["tpm2_flushcontext", "-s"], env=t.tpm.tools_env(), cwd=t.cwd, capture_output=True)


@pytest.mark.parametrize("alg", ["rsa", "ecc"])
def test_quote_verifies_with_checkquote(t: Tools, alg: str) -> None:
    _ek_and_ak(t, alg)
    digest = "11" * 32
    t("tpm2_pcrextend", f"16:sha256={digest}")
    t("tpm2_quote", "-c", "ak.ctx", "-l", "sha256:0,7,16", "-q", "c0ffee42", "-m", "quote.msg", "-s", "quote.sig",
      "-o", "quote.pcrs", "-g", "sha256")
    t("tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs", "-g", "sha256",
      "-q", "c0ffee42")
    wrong = t("tpm2_checkquote", "-u", "ak.pub", "-m", "quote.msg", "-s", "quote.sig", "-f", "quote.pcrs",
              "-g", "sha256", "-q", "deadbeef", check=False)
    assert wrong.returncode != 0


def test_credential_activation(t: Tools, tmp_path: Path) -> None:
    _ek_and_ak(t)
    (tmp_path / "secret").write_bytes(b"attestation service nonce")
    name = (tmp_path / "ak.name").read_bytes().hex()
    for extra, out in (([], "cred.tpm"), (["-T", "none"], "cred.offline")):
        t("tpm2_makecredential", *extra, "-u", "ek.pub", "-s", "secret", "-n", name, "-o", out)
        t("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
        t("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
        t("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", out, "-o", f"{out}.plain", "-P", "session:s.ctx")
        t("tpm2_flushcontext", "s.ctx")
        assert (tmp_path / f"{out}.plain").read_bytes() == b"attestation service nonce"
    other = "000b" + "ab" * 32  # a name that is not the AK's
    t("tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s", "secret", "-n", other, "-o", "cred.other")
    t("tpm2_startauthsession", "--policy-session", "-S", "s.ctx")
    t("tpm2_policysecret", "-S", "s.ctx", "-c", "e")
    refused = t("tpm2_activatecredential", "-c", "ak.ctx", "-C", "ek.ctx", "-i", "cred.other", "-o", "x",
                "-P", "session:s.ctx", check=False)
    assert refused.returncode != 0 and "0x1df" in refused.stderr.lower()  # TPM_RC_INTEGRITY, parameter 1


def test_pcr_policy_sealing(t: Tools, tmp_path: Path) -> None:
    t("tpm2_pcrextend", "7:sha256=" + "07" * 32)
    t("tpm2_createpolicy", "--policy-pcr", "-l", "sha256:7", "-L", "pcr.policy")
    t("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    (tmp_path / "disk.key").write_bytes(b"volume master key")
    t("tpm2_create", "-C", "prim.ctx", "-L", "pcr.policy", "-i", "disk.key", "-u", "s.pub", "-r", "s.priv",
      "-a", "fixedtpm|fixedparent")
    t("tpm2_load", "-C", "prim.ctx", "-u", "s.pub", "-r", "s.priv", "-c", "s.ctx")
    assert t("tpm2_unseal", "-c", "s.ctx", "-p", "pcr:sha256:7").stdout == "volume master key"
    t("tpm2_pcrextend", "7:sha256=" + "08" * 32)
    refused = t("tpm2_unseal", "-c", "s.ctx", "-p", "pcr:sha256:7", check=False)
    assert refused.returncode != 0 and "0x99d" in refused.stderr.lower()  # TPM_RC_POLICY_FAIL, session 1


def test_certify_certifycreation_gettime_nvcertify(t: Tools, tmp_path: Path) -> None:
    t("tpm2_createprimary", "-C", "o", "-c", "prim.ctx", "--creation-data", "cd.dat", "-d", "cd.digest", "-t", "cd.ticket")
    t("tpm2_create", "-C", "prim.ctx", "-G", "ecc", "-u", "sig.pub", "-r", "sig.priv",
      "-a", "fixedtpm|fixedparent|sensitivedataorigin|userwithauth|sign")
    t("tpm2_load", "-C", "prim.ctx", "-u", "sig.pub", "-r", "sig.priv", "-c", "sig.ctx")
    t("tpm2_nvdefine", "0x1500030", "-C", "o", "-s", "16", "-a", "ownerread|ownerwrite|authread|authwrite")
    t("tpm2_nvwrite", "0x1500030", "-C", "o", "-i", "-", stdin=b"0123456789abcdef")
    runs = {
        "certify": ("tpm2_certify", "-c", "prim.ctx", "-C", "sig.ctx", "-g", "sha256", "-o", "certify.attest",
                    "-s", "certify.sig"),
        "creation": ("tpm2_certifycreation", "-C", "sig.ctx", "-c", "prim.ctx", "-d", "cd.digest", "-t", "cd.ticket",
                     "-g", "sha256", "-o", "creation.sig", "--attestation", "creation.attest"),
        "time": ("tpm2_gettime", "-c", "sig.ctx", "-o", "time.sig", "--attestation", "time.attest"),
        "nv": ("tpm2_nvcertify", "-C", "sig.ctx", "-g", "sha256", "-o", "nv.sig", "--attestation", "nv.attest",
               "--size", "16", "0x1500030"),
    }
    for name, args in runs.items():
        t(*args)
        attest = (tmp_path / (f"{name}.attest")).read_bytes()
        assert attest[:4] == bytes.fromhex("ff544347"), name  # TPM_GENERATED_VALUE
        t("tpm2_verifysignature", "-c", "sig.ctx", "-g", "sha256", "-m", f"{name}.attest", "-s", f"{name}.sig")
    assert b"0123456789abcdef" in (tmp_path / "nv.attest").read_bytes()
    # a creation ticket for another digest is refused
    digest = bytearray((tmp_path / "cd.digest").read_bytes())
    digest[-1] ^= 1
    (tmp_path / "bad.digest").write_bytes(bytes(digest))
    bad = t("tpm2_certifycreation", "-C", "sig.ctx", "-c", "prim.ctx", "-d", "bad.digest", "-t", "cd.ticket",
            "-g", "sha256", "-o", "x.sig", "--attestation", "x.attest", check=False)
    assert bad.returncode != 0 and "0x4e0" in bad.stderr.lower()  # TPM_RC_TICKET, parameter 4
