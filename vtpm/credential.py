"""TPM2_MakeCredential without a TPM, as a verifier runs it (``tpm2_makecredential -T none``).

A verifier knows an EK only from its certificate (a SubjectPublicKeyInfo). The EK's public
area is the EK Credential Profile's default template with the key filled into ``unique``:
its nameAlg and symmetric key size are what the TPM will use to open the credential
(Part 1, 24.4; Part 3, 12.6). The blob layout and KDFs are those of the engine's own
MakeCredential, so a credential made here is opened by any TPM holding that EK and that AK.
"""

from __future__ import annotations

from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm.crypto import HASHES, hmac_digest, kdfa
from vtpm.ek import EkKind, ek_template
from vtpm.keyops import seal_to
from vtpm.marshal.objects import TPMT_PUBLIC
from vtpm.objects import LoadedObject, Public
from vtpm.sessions import CFB

MAX_CREDENTIAL = 64  # a TPM2B_DIGEST


class CredentialError(ValueError):
    """The EK cannot receive a credential (an unsupported key) or the inputs are malformed."""


def ek_public_from_key(key: Any) -> Public:
    """The default-template EK public area (RSA 2048 or ECC P-256) holding ``key``."""
    if isinstance(key, rsa.RSAPublicKey) and key.key_size == 2048 and key.public_numbers().e == 65537:
        area = TPMT_PUBLIC.parse(ek_template(EkKind.RSA2048).template)
        area.unique = key.public_numbers().n.to_bytes(256, "big")
    elif isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        area = TPMT_PUBLIC.parse(ek_template(EkKind.ECC_P256).template)
        numbers = key.public_numbers()
        area.unique.x, area.unique.y = numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")
    else:
        raise CredentialError("the EK is neither RSA 2048 (exponent 65537) nor ECC P-256")
    return Public.from_container(area)


def make_credential(ek: Public, object_name: bytes, credential: bytes) -> tuple[bytes, bytes]:
    """(TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET) that only the TPM with ``ek`` opens, and only for
    the object named ``object_name`` (TPM2_ActivateCredential's activateHandle)."""
    if not 0 < len(credential) <= MAX_CREDENTIAL:
        raise CredentialError(f"a credential is 1-{MAX_CREDENTIAL} bytes")
    if len(object_name) < 2 or int.from_bytes(object_name[:2], "big") not in HASHES:
        raise CredentialError("the object name must be nameAlg || digest")
    holder = LoadedObject(ek, None, 0, b"")
    alg, bits = ek.name_alg, ek.symmetric().keyBits
    seed, encrypted_seed = seal_to(holder, b"IDENTITY")
    sym_key = kdfa(alg, seed, b"STORAGE", object_name, b"", bits)
    hmac_key = kdfa(alg, seed, b"INTEGRITY", b"", b"", HASHES[alg].size * 8)
    encryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).encryptor()
    enc_identity = encryptor.update(len(credential).to_bytes(2, "big") + credential) + encryptor.finalize()
    outer = hmac_digest(alg, hmac_key, enc_identity, object_name)
    blob = len(outer).to_bytes(2, "big") + outer + enc_identity
    return (len(blob).to_bytes(2, "big") + blob, len(encrypted_seed).to_bytes(2, "big") + encrypted_seed)
