"""Policies proven with keys, and key migration, through tpm2-tools and openssl:
PolicyAuthorize (a signed, replaceable PCR policy), PolicySigned (a remote signer approves
a session), Duplicate + Import with and without an inner wrapper.

Refusals tried: an authorized policy signed by another key, a PolicySigned signature over
other data, a duplicate imported with the wrong inner key, duplicating without the policy.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from support.servers import start_vtpm
from support.tools import Tools, needs_tools

pytestmark = needs_tools("tpm2_policyauthorize")


def openssl(cwd: Path, *args: str) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def t(tmp_path: Path):
    with start_vtpm(["--state", str(tmp_path / "state"), "--startup-clear"], tmp_path / "log") as tpm:
        tools = Tools(tpm, tmp_path)
        for name in ("signer", "other"):
            openssl(tmp_path, "genrsa", "-out", f"{name}.pem", "2048")
            openssl(tmp_path, "rsa", "-in", f"{name}.pem", "-pubout", "-out", f"{name}.pub.pem")
        tools("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
        yield tools


def _policy(t: Tools, *steps: tuple[str, ...], out: str) -> None:
    t("tpm2_startauthsession", "-S", "trial.ctx")
    for number, step in enumerate(steps, 1):
        digest = ["-L", out] if number == len(steps) else []
        t(*step[:1], "-S", "trial.ctx", *digest, *step[1:])
    t("tpm2_flushcontext", "trial.ctx")


def test_policy_authorize_with_a_signed_pcr_policy(t: Tools, tmp_path: Path) -> None:
    t("tpm2_loadexternal", "-G", "rsa", "-C", "o", "-u", "signer.pub.pem", "-c", "signer.ctx", "-n", "signer.name")
    _policy(t, ("tpm2_policyauthorize", "-n", "signer.name"), out="authorized.policy")
    (tmp_path / "secret").write_bytes(b"released by an approved policy")
    t("tpm2_create", "-C", "prim.ctx", "-L", "authorized.policy", "-i", "secret", "-u", "s.pub", "-r", "s.priv",
      "-a", "fixedtpm|fixedparent")
    t("tpm2_load", "-C", "prim.ctx", "-u", "s.pub", "-r", "s.priv", "-c", "s.ctx")
    _policy(t, ("tpm2_policypcr", "-l", "sha256:0"), out="pcr.policy")

    def unseal_with(signature_key: str) -> subprocess.CompletedProcess[str]:
        openssl(tmp_path, "dgst", "-sha256", "-sign", signature_key, "-out", "pcr.sig", "pcr.policy")
        t("tpm2_loadexternal", "-G", "rsa", "-C", "o", "-u", "signer.pub.pem", "-c", "signer.ctx", "-n", "signer.name")
        verified = t("tpm2_verifysignature", "-c", "signer.ctx", "-g", "sha256", "-m", "pcr.policy", "-s", "pcr.sig",
                     "-t", "verified.tkt", "-f", "rsassa", check=False)
        if verified.returncode != 0:
            return verified
        t("tpm2_startauthsession", "--policy-session", "-S", "p.ctx")
        t("tpm2_policypcr", "-S", "p.ctx", "-l", "sha256:0")
        t("tpm2_policyauthorize", "-S", "p.ctx", "-i", "pcr.policy", "-n", "signer.name", "-t", "verified.tkt")
        result = t("tpm2_unseal", "-p", "session:p.ctx", "-c", "s.ctx", check=False)
        t("tpm2_flushcontext", "p.ctx")
        return result

    assert unseal_with("signer.pem").stdout == "released by an approved policy"
    assert unseal_with("other.pem").returncode != 0  # a policy signed by another key is not approved


def test_policy_signed(t: Tools, tmp_path: Path) -> None:
    t("tpm2_loadexternal", "-G", "rsa", "-C", "o", "-u", "signer.pub.pem", "-c", "signer.ctx", "-n", "signer.name")
    _policy(t, ("tpm2_policysigned", "-g", "sha256", "-c", "signer.ctx"), out="signed.policy")
    (tmp_path / "secret").write_bytes(b"released by a remote signer")
    t("tpm2_create", "-C", "prim.ctx", "-L", "signed.policy", "-i", "secret", "-u", "s.pub", "-r", "s.priv",
      "-a", "fixedtpm|fixedparent")
    t("tpm2_load", "-C", "prim.ctx", "-u", "s.pub", "-r", "s.priv", "-c", "s.ctx")
    t("tpm2_loadexternal", "-G", "rsa", "-C", "o", "-u", "signer.pub.pem", "-c", "signer.ctx", "-n", "signer.name")
    t("tpm2_startauthsession", "--policy-session", "-S", "p.ctx")
    t("tpm2_policysigned", "-S", "p.ctx", "-g", "sha256", "-c", "signer.ctx", "--raw-data", "to_sign.bin")
    (tmp_path / "tampered.bin").write_bytes((tmp_path / "to_sign.bin").read_bytes() + b"x")
    openssl(tmp_path, "dgst", "-sha256", "-sign", "signer.pem", "-out", "bad.sig", "tampered.bin")
    bad = t("tpm2_policysigned", "-S", "p.ctx", "-g", "sha256", "-s", "bad.sig", "-f", "rsassa", "-c", "signer.ctx",
            check=False)
    assert bad.returncode != 0 and "0x5db" in bad.stderr.lower()  # TPM_RC_SIGNATURE, parameter 5
    openssl(tmp_path, "dgst", "-sha256", "-sign", "signer.pem", "-out", "good.sig", "to_sign.bin")
    t("tpm2_policysigned", "-S", "p.ctx", "-g", "sha256", "-s", "good.sig", "-f", "rsassa", "-c", "signer.ctx")
    assert t("tpm2_unseal", "-p", "session:p.ctx", "-c", "s.ctx").stdout == "released by a remote signer"


def test_duplicate_and_import(t: Tools, tmp_path: Path) -> None:
    _policy(t, ("tpm2_policycommandcode", "TPM2_CC_Duplicate"), out="dup.policy")
    t("tpm2_create", "-C", "prim.ctx", "-G", "rsa", "-u", "k.pub", "-r", "k.priv", "-L", "dup.policy",
      "-a", "sensitivedataorigin|userwithauth|decrypt|sign")
    t("tpm2_load", "-C", "prim.ctx", "-u", "k.pub", "-r", "k.priv", "-c", "k.ctx")
    t("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "np.ctx")
    refused = t("tpm2_duplicate", "-C", "np.ctx", "-c", "k.ctx", "-G", "null", "-r", "x.dpriv", "-s", "x.seed", check=False)
    assert refused.returncode != 0  # the DUP role needs the policy session
    (tmp_path / "inner.key").write_bytes(os.urandom(16))
    for sym, extra in (("null", []), ("aes", ["-i", "inner.key"])):
        t("tpm2_startauthsession", "--policy-session", "-S", "d.ctx")
        t("tpm2_policycommandcode", "-S", "d.ctx", "TPM2_CC_Duplicate")
        t("tpm2_duplicate", "-C", "np.ctx", "-c", "k.ctx", "-G", sym, *extra, "-p", "session:d.ctx",
          "-r", f"{sym}.dpriv", "-s", f"{sym}.seed")
        t("tpm2_flushcontext", "d.ctx")
        imported = ["-k", "inner.key", "-G", "aes"] if sym == "aes" else []
        t("tpm2_import", "-C", "np.ctx", "-u", "k.pub", "-i", f"{sym}.dpriv", "-r", f"{sym}.priv", "-s", f"{sym}.seed",
          *imported)
        t("tpm2_load", "-C", "np.ctx", "-u", "k.pub", "-r", f"{sym}.priv", "-c", f"{sym}.ctx")
        (tmp_path / "m").write_bytes(b"same key on its new parent")
        t("tpm2_sign", "-c", f"{sym}.ctx", "-g", "sha256", "-o", f"{sym}.sig", "m")
        t("tpm2_verifysignature", "-c", "k.ctx", "-g", "sha256", "-m", "m", "-s", f"{sym}.sig")
    (tmp_path / "wrong.key").write_bytes(os.urandom(16))
    wrong = t("tpm2_import", "-C", "np.ctx", "-u", "k.pub", "-i", "aes.dpriv", "-r", "w.priv", "-s", "aes.seed",
              "-k", "wrong.key", "-G", "aes", check=False)
    assert wrong.returncode != 0 and "0x3df" in wrong.stderr.lower()  # TPM_RC_INTEGRITY, parameter 3
