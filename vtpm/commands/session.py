"""Session Commands (Part 3, section 11): StartAuthSession and PolicyRestart."""

from __future__ import annotations

from typing import TYPE_CHECKING

import construct as cs

from vtpm.constants import ALG, CC, HT, NT, RC, RH, HMAC_SESSION_FIRST, POLICY_SESSION_FIRST
from vtpm.core import ENTITY_RESOLVERS, Command, Response, command, handle_spec
from vtpm.crypto import HASHES
from vtpm.entities.object_table import get_object
from vtpm.errors import TpmError
from vtpm.keyops import decrypt_secret
from vtpm.marshal.primitives import U8, Tpm2b, OneOf
from vtpm.marshal.structures import TPM2B_NONCE, TPMI_ALG_HASH
from vtpm.sessions import MAX_LOADED_SESSIONS, AuthSession, SessionType, SymDef, bind_value, session_key

if TYPE_CHECKING:
    from vtpm.engine import Tpm

TPM2B_ENCRYPTED_SECRET = Tpm2b(512)
TPM_SE = OneOf(U8, [SessionType.HMAC, SessionType.POLICY, SessionType.TRIAL], RC.VALUE)
TPMT_SYM_DEF = cs.Struct(
    "algorithm" / cs.Int16ub,
    "keyBits" / cs.If(cs.this.algorithm != ALG.NULL, cs.Int16ub),
    "mode" / cs.If(cs.this.algorithm != ALG.NULL, cs.Int16ub),
)
# TPMT_SYM_DEF for XOR carries a hash instead of keyBits and no mode
TPMT_SYM_DEF_ANY = cs.Struct(
    "algorithm" / cs.Int16ub,
    "keyBits" / cs.If(cs.this.algorithm != ALG.NULL, cs.Int16ub),
    "mode" / cs.If((cs.this.algorithm != ALG.NULL) & (cs.this.algorithm != ALG.XOR), cs.Int16ub),
)

ANY_ENTITY = [HT.NV_INDEX, HT.PCR, HT.TRANSIENT, HT.PERSISTENT]
BIND_PERMANENT = [RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.LOCKOUT, RH.NULL]


def salt_decryptor(tpm: Tpm, key_handle: int, encrypted: bytes) -> bytes:
    """Recover a session salt sent under a loaded key: RSA-OAEP or ECDH with the label "SECRET"."""
    key = get_object(tpm, key_handle)
    if key.public.type not in (ALG.RSA, ALG.ECC):
        raise TpmError(RC.KEY, handle=1)
    if not encrypted:
        raise TpmError(RC.VALUE, param=2)
    return decrypt_secret(key, encrypted, b"SECRET", 2)


def _symmetric(tpm: Tpm, raw: cs.Container) -> SymDef:
    alg = raw.algorithm
    if alg == ALG.NULL:
        return SymDef()
    if alg == ALG.XOR:
        if raw.keyBits not in HASHES:
            raise TpmError(RC.HASH, param=4)
        return SymDef(ALG.XOR, 0, raw.keyBits)
    if alg != ALG.AES:
        raise TpmError(RC.SYMMETRIC, param=4)
    if raw.keyBits not in (128, 192, 256):
        raise TpmError(RC.KEY_SIZE, param=4)
    if raw.mode != ALG.CFB:
        raise TpmError(RC.MODE, param=4)
    return SymDef(ALG.AES, raw.keyBits, ALG.CFB)


def _free_handle(tpm: Tpm, policy: bool) -> int:
    sessions = tpm.volatile.sessions
    if len(sessions) >= MAX_LOADED_SESSIONS:
        raise TpmError(RC.SESSION_MEMORY)
    base = POLICY_SESSION_FIRST if policy else HMAC_SESSION_FIRST
    handle = base
    while handle in sessions or handle in tpm.volatile.saved_sessions:
        handle += 1
    return handle


@command(
    CC.StartAuthSession,
    handles=[
        handle_spec("tpmKey", types=[HT.TRANSIENT, HT.PERSISTENT], permanent=[RH.NULL]),
        handle_spec("bind", types=ANY_ENTITY, permanent=BIND_PERMANENT),
    ],
    params=[
        ("nonceCaller", TPM2B_NONCE),
        ("encryptedSalt", TPM2B_ENCRYPTED_SECRET),
        ("sessionType", TPM_SE),
        ("symmetric", TPMT_SYM_DEF_ANY),
        ("authHash", TPMI_ALG_HASH),
    ],
    response_tpm2b=True,
)
def start_auth_session(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_StartAuthSession (Part 3 11.1): start an HMAC, policy or trial session, salted by a loaded key and/or bound
    to an entity, with the symmetric algorithm for parameter encryption."""
    p = cmd.params
    key_handle, bind_handle = cmd.handles
    auth_hash = p.authHash
    if len(p.nonceCaller) < 16:
        raise TpmError(RC.SIZE, param=1)
    if key_handle == RH.NULL:
        if p.encryptedSalt:
            raise TpmError(RC.VALUE, param=2)
        salt = b""
    else:
        salt = salt_decryptor(tpm, key_handle, p.encryptedSalt)
    symmetric = _symmetric(tpm, p.symmetric)
    bind_auth, bound = b"", b""
    if bind_handle != RH.NULL:
        entity = ENTITY_RESOLVERS[bind_handle >> 24](tpm, bind_handle)
        index = tpm.state.nv.get(bind_handle) if bind_handle >> 24 == HT.NV_INDEX else None
        if index is not None and index.kind in (NT.PIN_FAIL, NT.PIN_PASS):
            raise TpmError(RC.HANDLE, handle=2)  # a PIN index is no bind entity
        bind_auth = entity.auth_value.rstrip(b"\x00")
        bound = bind_value(entity.name_for(bind_handle), entity.auth_value)
    policy = p.sessionType != SessionType.HMAC
    handle = _free_handle(tpm, policy)
    nonce_tpm = tpm.random(HASHES[auth_hash].size)
    session = AuthSession(
        handle=handle,
        session_type=p.sessionType,
        auth_hash=auth_hash,
        session_key=session_key(auth_hash, bind_auth, salt, nonce_tpm, p.nonceCaller,
                                bound_or_salted=key_handle != RH.NULL or bind_handle != RH.NULL),
        nonce_tpm=nonce_tpm,
        symmetric=symmetric,
        bound_entity=bound,
        is_trial=p.sessionType == SessionType.TRIAL,
        nonce_caller=p.nonceCaller,
        start_nonce_tpm=nonce_tpm,
        start_ms=tpm.now_ms(),  # PolicySecret/PolicySigned expirations count from here
    )
    session.reset_policy()
    tpm.volatile.sessions[handle] = session
    return Response(params=TPM2B_NONCE.build(nonce_tpm), handles=(handle,))


@command(CC.PolicyRestart, handles=[handle_spec("sessionHandle", types=[HT.POLICY_SESSION])])
def policy_restart(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_PolicyRestart (Part 3 11.2): reset a policy session's digest and recorded assertions; TPM_RC_HANDLE when the
    handle is no loaded policy session."""
    session = tpm.volatile.sessions.get(cmd.handles[0])
    if session is None or not session.is_policy:
        raise TpmError(RC.HANDLE, handle=1)
    session.reset_policy()
    return Response()
