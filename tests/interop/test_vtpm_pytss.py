"""tpm2-pytss (ESAPI over the swtpm TCTI) against the vTPM, and the same suite against swtpm,
so the checks are about TPM behaviour rather than this implementation's assumptions.

Every authorized command runs in a salted (RSA and ECC salt keys), bound-free HMAC session
with AES-128-CFB parameter encryption in both directions, as ESAPI clients use them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

pytss = pytest.importorskip("tpm2_pytss", reason="tpm2-pytss is installed by the test extras")

from tpm2_pytss import ESAPI, TCTILdr  # noqa: E402
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_RH, TPM2_SE, TPMA_NV, TPMA_SESSION  # noqa: E402
from tpm2_pytss.TSS2_Exception import TSS2_Exception  # noqa: E402
from tpm2_pytss.types import (  # noqa: E402
    TPM2B_AUTH,
    TPM2B_DIGEST,
    TPM2B_IV,
    TPM2B_NV_PUBLIC,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPML_PCR_SELECTION,
    TPMS_NV_PUBLIC,
    TPMS_SENSITIVE_CREATE,
    TPMT_SIG_SCHEME,
    TPMT_SYM_DEF,
    TPMT_TK_HASHCHECK,
)

from support.servers import require_swtpm, start_swtpm, start_vtpm  # noqa: E402

AES128CFB = TPMT_SYM_DEF(algorithm=TPM2_ALG.AES)
AES128CFB.keyBits.aes = 128
AES128CFB.mode.aes = TPM2_ALG.CFB


@pytest.fixture(params=["vtpm", "swtpm"])
def esapi(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ESAPI]:
    if request.param == "vtpm":
        server = start_vtpm(["--state", str(tmp_path / "vtpm"), "--startup-clear"], tmp_path / "log")
    else:
        require_swtpm()
        server = start_swtpm(tmp_path / "swtpm")
    with server:
        tcti = TCTILdr("swtpm", f"host=127.0.0.1,port={server.port}")
        ectx = ESAPI(tcti)
        try:
            yield ectx
        finally:
            ectx.close()
            tcti.close()


def salted_session(ectx: ESAPI, salt_key: ESYS_TR) -> ESYS_TR:
    session = ectx.start_auth_session(salt_key, ESYS_TR.NONE, TPM2_SE.HMAC, AES128CFB, TPM2_ALG.SHA256)
    ectx.trsess_set_attributes(
        session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.DECRYPT | TPMA_SESSION.ENCRYPT
    )
    return session


def _srk(ectx: ESAPI, alg: str = "rsa2048") -> ESYS_TR:
    handle, *_ = ectx.create_primary(None, alg)
    return handle


@pytest.mark.parametrize("salt", ["rsa2048", "ecc256"])
def test_keys_sign_and_unseal_in_salted_encrypted_sessions(esapi: ESAPI, salt: str) -> None:
    srk = _srk(esapi, salt)
    session = salted_session(esapi, srk)

    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"keypass")))
    template = TPM2B_PUBLIC.parse("ecc256:ecdsa-sha256", objectAttributes="userwithauth|sign|fixedtpm|fixedparent|sensitivedataorigin")
    priv, pub, *_ = esapi.create(srk, sensitive, template, session1=session)
    key = esapi.load(srk, priv, pub, session1=session)
    esapi.tr_set_auth(key, b"keypass")
    digest = hashlib.sha256(b"attested payload").digest()
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
    ticket = TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=TPM2_RH.NULL)
    signature = esapi.sign(key, TPM2B_DIGEST(digest), scheme, ticket, session1=session)
    esapi.verify_signature(key, TPM2B_DIGEST(digest), signature)
    with pytest.raises(TSS2_Exception):
        esapi.verify_signature(key, TPM2B_DIGEST(hashlib.sha256(b"other").digest()), signature)

    seal = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"sealpass"), data=b"sealed secret"))
    seal_template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes="userwithauth|fixedtpm|fixedparent")
    priv, pub, *_ = esapi.create(srk, seal, seal_template, session1=session)
    sealed = esapi.load(srk, priv, pub, session1=session)
    esapi.tr_set_auth(sealed, b"sealpass")
    assert bytes(esapi.unseal(sealed, session1=session)) == b"sealed secret"
    esapi.tr_set_auth(sealed, b"wrong")
    with pytest.raises(TSS2_Exception):
        esapi.unseal(sealed, session1=session)
    esapi.flush_context(session)


def test_quote_with_restricted_key(esapi: ESAPI) -> None:
    srk = _srk(esapi)
    session = salted_session(esapi, srk)
    template = TPM2B_PUBLIC.parse(
        "rsa2048:rsassa-sha256:null",  # a signing key has no symmetric algorithm
        objectAttributes="userwithauth|sign|restricted|fixedtpm|fixedparent|sensitivedataorigin",
    )
    priv, pub, *_ = esapi.create(srk, None, template, session1=session)
    ak = esapi.load(srk, priv, pub, session1=session)
    selection = TPML_PCR_SELECTION.parse("sha256:0,1,2,16")
    quoted, signature = esapi.quote(ak, selection, b"nonce-1234", TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), session1=session)
    attest = bytes(quoted.marshal())[2:]
    assert attest[:4] == bytes.fromhex("ff544347")  # TPM_GENERATED_VALUE
    assert b"nonce-1234" in attest
    _, _, values = esapi.pcr_read(selection)
    assert hashlib.sha256(b"".join(bytes(v) for v in values)).digest() in attest
    digest = hashlib.sha256(attest).digest()
    esapi.verify_signature(ak, TPM2B_DIGEST(digest), signature)
    # a restricted key will not sign an arbitrary digest without a hash-check ticket
    with pytest.raises(TSS2_Exception):
        esapi.sign(ak, TPM2B_DIGEST(digest), TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL),
                   TPMT_TK_HASHCHECK(tag=0x8024, hierarchy=TPM2_RH.NULL), session1=session)
    esapi.flush_context(session)


def test_nv_in_encrypted_session(esapi: ESAPI) -> None:
    srk = _srk(esapi)
    session = salted_session(esapi, srk)
    public = TPM2B_NV_PUBLIC(TPMS_NV_PUBLIC(
        nvIndex=0x01500100, nameAlg=TPM2_ALG.SHA256,
        attributes=TPMA_NV.AUTHREAD | TPMA_NV.AUTHWRITE | TPMA_NV.NO_DA, dataSize=32,
    ))
    index = esapi.nv_define_space(TPM2B_AUTH(b"nvpass"), public, session1=session)
    esapi.tr_set_auth(index, b"nvpass")
    esapi.nv_write(index, b"confidential nv data", 0, auth_handle=index, session1=session)
    assert bytes(esapi.nv_read(index, 20, 0, auth_handle=index, session1=session)) == b"confidential nv data"
    esapi.tr_set_auth(index, b"bad")
    with pytest.raises(TSS2_Exception):
        esapi.nv_read(index, 20, 0, auth_handle=index, session1=session)
    esapi.tr_set_auth(index, b"nvpass")
    esapi.nv_undefine_space(index, session1=session)
    esapi.flush_context(session)


def test_nv_with_policy_session(esapi: ESAPI) -> None:
    """An NV index readable only through PolicyCommandCode(NV_Read) + PolicyAuthValue."""
    trial = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.TRIAL, TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                     TPM2_ALG.SHA256)
    esapi.policy_command_code(trial, TPM2_CC.NV_Read)
    esapi.policy_auth_value(trial)
    policy = esapi.policy_get_digest(trial)
    esapi.flush_context(trial)
    public = TPM2B_NV_PUBLIC(TPMS_NV_PUBLIC(
        nvIndex=0x01500200, nameAlg=TPM2_ALG.SHA256, authPolicy=policy,
        attributes=TPMA_NV.AUTHWRITE | TPMA_NV.POLICYREAD | TPMA_NV.NO_DA, dataSize=16,
    ))
    index = esapi.nv_define_space(TPM2B_AUTH(b"pol"), public)
    esapi.tr_set_auth(index, b"pol")
    esapi.nv_write(index, b"policy protected", 0, auth_handle=index)
    with pytest.raises(TSS2_Exception):  # AUTHREAD is clear: a password cannot read
        esapi.nv_read(index, 16, 0, auth_handle=index)
    session = esapi.start_auth_session(ESYS_TR.NONE, ESYS_TR.NONE, TPM2_SE.POLICY, AES128CFB, TPM2_ALG.SHA256)
    esapi.policy_command_code(session, TPM2_CC.NV_Read)
    esapi.policy_auth_value(session)
    esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT)
    assert bytes(esapi.nv_read(index, 16, 0, auth_handle=index, session1=session)) == b"policy protected"
    esapi.flush_context(session)
    esapi.nv_undefine_space(index)


@pytest.mark.parametrize("mode", ["cfb", "cbc", "ctr", "ofb", "ecb"])
def test_symmetric_modes_and_chaining_values(esapi: ESAPI, mode: str) -> None:
    """EncryptDecrypt2 with a key of known value: output and ivOut checked against `cryptography`."""
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from vtpm.sessions import CFB

    try:
        from cryptography.hazmat.decrepit.ciphers.modes import OFB
    except ImportError:  # older cryptography
        OFB = modes.OFB  # noqa: N806

    key_bytes = bytes(range(16))
    srk = _srk(esapi)
    sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=key_bytes))
    template = TPM2B_PUBLIC.parse(f"aes128{mode}", objectAttributes="userwithauth|decrypt|sign|fixedtpm|fixedparent")
    priv, pub, *_ = esapi.create(srk, sensitive, template)
    key = esapi.load(srk, priv, pub)
    iv = b"" if mode == "ecb" else bytes(range(100, 116))  # ECB takes no IV
    data = bytes(range(64))
    out, iv_out = esapi.encrypt_decrypt_2(key, False, TPM2_ALG.NULL, TPM2B_IV(iv), data)
    reference = {"cfb": CFB(iv), "cbc": modes.CBC(iv), "ctr": modes.CTR(iv), "ofb": OFB(iv), "ecb": modes.ECB()}
    enc = Cipher(algorithms.AES(key_bytes), reference[mode]).encryptor()
    assert bytes(out) == enc.update(data) + enc.finalize()
    expected_iv = {"cfb": bytes(out)[-16:], "cbc": bytes(out)[-16:], "ecb": iv,
                   "ctr": (int.from_bytes(iv, "big") + 4).to_bytes(16, "big")}.get(mode)
    if expected_iv is not None:
        assert bytes(iv_out) == expected_iv
    back, _ = esapi.encrypt_decrypt_2(key, True, TPM2_ALG.NULL, TPM2B_IV(iv), bytes(out))
    assert bytes(back) == data


def test_object_change_auth_rsa_and_ecdh(esapi: ESAPI) -> None:
    srk = _srk(esapi)
    template = TPM2B_PUBLIC.parse("ecc256:ecdh", objectAttributes="userwithauth|decrypt|fixedtpm|fixedparent|sensitivedataorigin")
    priv, pub, *_ = esapi.create(srk, TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"old"))), template)
    key = esapi.load(srk, priv, pub)
    esapi.tr_set_auth(key, b"old")
    new_priv = esapi.object_change_auth(key, srk, TPM2B_AUTH(b"new"))
    esapi.flush_context(key)
    key = esapi.load(srk, new_priv, pub)
    esapi.tr_set_auth(key, b"new")
    z_point, pub_point = esapi.ecdh_key_gen(key)
    assert bytes(esapi.ecdh_zgen(key, pub_point).point.x) == bytes(z_point.point.x)
    esapi.tr_set_auth(key, b"old")
    with pytest.raises(TSS2_Exception):
        esapi.ecdh_zgen(key, pub_point)


def test_hmac_and_hmac_sequences(esapi: ESAPI) -> None:
    import hmac

    secret = bytes(range(32))
    srk = _srk(esapi)
    template = TPM2B_PUBLIC.parse("hmac:sha256", objectAttributes="userwithauth|sign|fixedtpm|fixedparent")
    priv, pub, *_ = esapi.create(srk, TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=secret)), template)
    key = esapi.load(srk, priv, pub)
    message = b"measured boot event log" * 100
    expected = hmac.new(secret, message, "sha256").digest()
    assert bytes(esapi.hmac(key, message[:1024], TPM2_ALG.SHA256)) == hmac.new(secret, message[:1024], "sha256").digest()
    sequence = esapi.hmac_start(key, TPM2B_AUTH(b""), TPM2_ALG.SHA256)
    for offset in range(0, len(message) - 1024, 1024):
        esapi.sequence_update(sequence, message[offset : offset + 1024])
    rest = message[(len(message) - 1) // 1024 * 1024 :]
    result, _ = esapi.sequence_complete(sequence, rest)
    assert bytes(result) == expected


@pytest.mark.parametrize("parameter_encryption", ["aes", "xor"])
def test_bound_sessions_and_xor_obfuscation(esapi: ESAPI, parameter_encryption: str) -> None:
    """A session bound to the sealed object (its authValue keys the session, not each HMAC),
    with AES-CFB or XOR parameter encryption, unseals; bound to another entity it still works."""
    srk = _srk(esapi)
    seal = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(userAuth=TPM2B_AUTH(b"sealpw"), data=b"bound secret"))
    template = TPM2B_PUBLIC.parse("keyedhash", objectAttributes="userwithauth|fixedtpm|fixedparent")
    priv, pub, *_ = esapi.create(srk, seal, template)
    sealed = esapi.load(srk, priv, pub)
    esapi.tr_set_auth(sealed, b"sealpw")
    if parameter_encryption == "xor":
        symmetric = TPMT_SYM_DEF(algorithm=TPM2_ALG.XOR)
        symmetric.keyBits.exclusiveOr = TPM2_ALG.SHA256
    else:
        symmetric = AES128CFB
    for bind in (sealed, srk):
        session = esapi.start_auth_session(ESYS_TR.NONE, bind, TPM2_SE.HMAC, symmetric, TPM2_ALG.SHA256)
        esapi.trsess_set_attributes(session, TPMA_SESSION.CONTINUESESSION | TPMA_SESSION.ENCRYPT)
        assert bytes(esapi.unseal(sealed, session1=session)) == b"bound secret"
        esapi.flush_context(session)
