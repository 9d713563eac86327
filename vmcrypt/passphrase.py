"""Keys derived from passphrases with scrypt, self-describing inside a KeyReference.

The scrypt salt and cost parameters are not secret; they are stored in the
``wrapped_dek`` field of the reference (wrap algorithm SCRYPT), so a file
protected by a passphrase carries everything needed to open it but the
passphrase itself.
"""

from __future__ import annotations

import getpass
import os
import secrets
import sys
from pathlib import Path

from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from vmcrypt.errors import UnsupportedFormatError, VmcryptError
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm

SALT_SIZE = 16
DEFAULT_LOG2_N = 15  # N = 32768, r = 8: about 32 MiB and ~0.1 s, OWASP's floor for scrypt
DEFAULT_R = 8
DEFAULT_P = 1
PASSPHRASE_KEY_ID = "passphrase-scrypt"


def _derive(passphrase: bytes, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=1 << log2_n, r=r, p=p).derive(passphrase)


def passphrase_key(passphrase: bytes, *, provider_id: str, log2_n: int = DEFAULT_LOG2_N) -> DataKey:
    """A fresh key (new salt) derived from ``passphrase``."""
    if not passphrase:
        raise VmcryptError("an empty passphrase is not allowed")
    salt = secrets.token_bytes(SALT_SIZE)
    params = salt + bytes([log2_n, DEFAULT_R, DEFAULT_P])
    reference = KeyReference(provider_id, PASSPHRASE_KEY_ID, WrapAlgorithm.SCRYPT, params)
    return DataKey(_derive(passphrase, salt, log2_n, DEFAULT_R, DEFAULT_P), reference)


def read_passphrase_key(reference: KeyReference, passphrase: bytes) -> DataKey:
    """Re-derive the key named by ``reference`` (as stored in a container header)."""
    params = reference.wrapped_dek
    if reference.wrap_algorithm != WrapAlgorithm.SCRYPT or len(params) != SALT_SIZE + 3:
        raise UnsupportedFormatError("not protected by a passphrase")
    log2_n, r, p = params[SALT_SIZE:]
    if not (10 <= log2_n <= 22 and 1 <= r <= 32 and 1 <= p <= 16):
        raise UnsupportedFormatError(f"implausible scrypt parameters (N=2^{log2_n}, r={r}, p={p})")
    return DataKey(_derive(passphrase, params[:SALT_SIZE], log2_n, r, p), reference)


def obtain_passphrase(path: str | None, env: str, prompt: str) -> bytes:
    """A passphrase from a file, else an environment variable, else a terminal prompt."""
    if path:
        text = Path(path).read_text().rstrip("\r\n")
    elif os.environ.get(env):
        text = os.environ[env]
    elif sys.stdin.isatty():
        text = getpass.getpass(prompt)
    else:
        raise VmcryptError(f"a passphrase is needed: pass a passphrase file or set {env}")
    if not text:
        raise VmcryptError("an empty passphrase is not allowed")
    return text.encode()
