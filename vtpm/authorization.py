"""The authorization area of a command and its response (Part 1 19, Part 3 5.6-5.8).

``authorize`` checks every session of a command (password, HMAC or policy),
applies dictionary-attack rules and decrypts the first parameter when a
session asks for it; ``respond`` encrypts the first response parameter and
builds the response authorization area with fresh nonces.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from vtpm.constants import CC, HT, RC, RH, ST, TPMA_NV, TPMA_SESSION
from vtpm.core import ENTITY_RESOLVERS, Auth, CommandSpec, Entity, HandleSpec, Session
from vtpm.crypto import digest
from vtpm.entities.audit import is_audited, record_command
from vtpm.errors import TpmError
from vtpm.marshal.primitives import Tpm2b, Tpm2bStruct
from vtpm.sessions import (
    AuthSession,
    bind_value,
    check_hmac,
    cp_hash,
    crypt_parameter,
    rp_hash,
    session_hmac,
)

if TYPE_CHECKING:
    from vtpm.engine import Tpm

AUDIT_FLAGS = int(TPMA_SESSION.AUDIT | TPMA_SESSION.AUDIT_EXCLUSIVE | TPMA_SESSION.AUDIT_RESET)
AUDIT = int(TPMA_SESSION.AUDIT)
AUDIT_EXCLUSIVE = int(TPMA_SESSION.AUDIT_EXCLUSIVE)
AUDIT_RESET = int(TPMA_SESSION.AUDIT_RESET)
DECRYPT = int(TPMA_SESSION.DECRYPT)
ENCRYPT = int(TPMA_SESSION.ENCRYPT)
CONTINUE = int(TPMA_SESSION.CONTINUE_SESSION)
PASSWORD_FORBIDDEN = ENCRYPT | DECRYPT | AUDIT_FLAGS
# Enum members read on every command, as plain values (a class attribute lookup each otherwise).
_PW, _PLATFORM, _SESSIONS = int(RH.PW), int(RH.PLATFORM), int(ST.SESSIONS)
_DUP, _ADMIN = Auth.DUP, Auth.ADMIN
_ADMIN_ROLES = (Auth.ADMIN, Auth.DUP)
# TPMS_AUTH_RESPONSE of a password session by its attributes: empty nonce, the attributes, empty HMAC.
_PASSWORD_RESPONSES = [b"\x00\x00" + bytes([attributes]) + b"\x00\x00" for attributes in range(256)]


@dataclass
class SessionUse:
    """One session of this command and what it authorizes."""

    number: int
    wire: "Session"
    session: AuthSession | None  # None for a password session
    entity: "Entity | None"
    hspec: "HandleSpec | None"
    handle: int | None = None  # the handle this session authorizes
    include_auth: bool = False  # decided at command time, used again for the response

    @property
    def attributes(self) -> int:
        """The TPMA_SESSION byte the caller sent for this session."""
        return self.wire.attributes

    def includes_auth_value(self) -> bool:
        """Whether the HMAC key includes the entity's authValue: a policy session that asserted PolicyAuthValue, an HMAC
        session not bound to this very entity."""
        if self.entity is None or self.session is None:
            return False
        if self.session.is_policy:
            return self.session.needs_auth_value
        bound = self.session.bound_entity
        name = self.entity.name_for(self.handle or 0)
        return not (bound and hmac.compare_digest(bound, bind_value(name, self.entity.auth_value)))

    def session_value(self, auth_value: bytes | None = None) -> bytes:
        """sessionKey || authValue, the key for parameter encryption (Part 1 21.1).

        The authValue of the entity the session authorizes is always part of it, bound
        session or not (as the reference implementation does); ``auth_value`` overrides
        it for the response of a command that changed it.
        """
        assert self.session is not None
        if auth_value is None:
            auth_value = self.entity.auth_value.rstrip(b"\x00") if self.entity is not None else b""
        return self.session.session_key + auth_value


@dataclass
class AuthContext:
    """The sessions of one command: who authorizes which handle, which session decrypts the first parameter, encrypts
    the response, audits it, and the command's cpHash."""
    uses: list[SessionUse] = field(default_factory=list)
    decrypt: SessionUse | None = None
    encrypt: SessionUse | None = None
    audit: SessionUse | None = None  # the session with the audit attribute, if any
    command_hash: Callable[[int], bytes] | None = None  # cpHash of this command under a hash algorithm
    allows_sessions: bool = True


def _extra_nonces(ctx: AuthContext, use: SessionUse) -> bytes:
    """nonceTPM of the decrypt/encrypt sessions, added to the HMAC of session 1 only."""
    if use.number != 1:
        return b""
    extra = b""
    if ctx.decrypt is not None and ctx.decrypt.number != 1 and ctx.decrypt.session is not None:
        extra += ctx.decrypt.session.nonce_tpm
    if (ctx.encrypt is not None and ctx.encrypt.number != 1 and ctx.encrypt is not ctx.decrypt
            and ctx.encrypt.session is not None):
        extra += ctx.encrypt.session.nonce_tpm
    return extra


def authorize(tpm: "Tpm", spec: "CommandSpec", code: int, handles: list[int], entities: list["Entity"],
              sessions: list["Session"], raw_params: bytes,
              auth_handles: Sequence[int]) -> tuple[AuthContext, bytes]:
    """Check all sessions; return the context and the (possibly decrypted) parameter bytes."""

    ctx = AuthContext()
    loaded = tpm.volatile.sessions
    seen: set[int] = set()
    for number, wire in enumerate(sessions, 1):
        index = auth_handles[number - 1] if number <= len(auth_handles) else None
        entity = entities[index] if index is not None else None
        hspec = spec.handles[index] if index is not None else None
        handle = handles[index] if index is not None else None
        if wire.handle == _PW:
            if entity is None:  # a password session must authorize a handle
                raise TpmError(RC.HANDLE, session=number)
            if wire.attributes & PASSWORD_FORBIDDEN:
                raise TpmError(RC.ATTRIBUTES, session=number)
            if wire.nonce:
                raise TpmError(RC.NONCE, session=number)
            use = SessionUse(number, wire, None, entity, hspec, handle)
        else:
            session = loaded.get(wire.handle)
            if session is None:
                raise TpmError(RC.REFERENCE_S0 + number - 1)
            if wire.handle in seen:
                raise TpmError(RC.HANDLE, session=number)
            if session.is_trial:  # a trial policy session only computes a digest: it never appears here
                raise TpmError(RC.ATTRIBUTES, session=number)
            use = SessionUse(number, wire, session, entity, hspec, handle)
            use.include_auth = use.includes_auth_value()
        seen.add(wire.handle)
        ctx.uses.append(use)
        if wire.attributes & DECRYPT:
            if ctx.decrypt is not None or not _first_is_tpm2b(spec):
                raise TpmError(RC.ATTRIBUTES, session=number)
            ctx.decrypt = use
        if wire.attributes & ENCRYPT:
            if ctx.encrypt is not None or not spec.response_tpm2b:
                raise TpmError(RC.ATTRIBUTES, session=number)
            ctx.encrypt = use
        if wire.attributes & AUDIT:
            _check_audit_session(tpm, ctx, use)
            ctx.audit = use

    names: list[bytes] = []
    hashes: dict[int, bytes] = {}

    def handle_names() -> list[bytes]:
        # the Names of the command's handles, looked at only when cpHash or a policy needs them
        if len(names) != len(handles):
            names[:] = [entity.name_for(handle) for entity, handle in zip(entities, handles)]
        return names

    def command_hash(alg: int) -> bytes:
        if alg not in hashes:
            hashes[alg] = cp_hash(alg, code, handle_names(), raw_params)
        return hashes[alg]

    ctx.command_hash = command_hash
    ctx.allows_sessions = spec.allow_sessions
    if not ctx.uses:
        return ctx, raw_params
    for use in ctx.uses:
        session = use.session
        if use.entity is None:  # a session for encryption or audit only: its HMAC still has to match
            assert session is not None
            if not use.attributes & (AUDIT | ENCRYPT | DECRYPT):
                raise TpmError(RC.ATTRIBUTES, session=use.number)
            use.include_auth = False
            _check_hmac(tpm, ctx, use, command_hash(session.auth_hash))
            continue
        _check_authorization(tpm, ctx, use, code, command_hash, handle_names, raw_params)

    for use in ctx.uses:
        if use.session is not None:
            use.session.nonce_caller = use.wire.nonce
    if ctx.decrypt is not None and ctx.decrypt.session is not None:
        raw_params = _crypt_first(ctx.decrypt, raw_params, encrypt=False)
    return ctx, raw_params


def _check_audit_session(tpm: "Tpm", ctx: AuthContext, use: SessionUse) -> None:
    """The audit attribute (Part 1 19.6.10): one HMAC session per command, and an exclusive
    audit (auditExclusive without auditReset) only from the session that still is exclusive."""
    session = use.session
    assert session is not None
    if ctx.audit is not None or session.is_policy:
        raise TpmError(RC.ATTRIBUTES, session=use.number)
    if (not use.attributes & AUDIT_RESET and session.is_audit and use.attributes & AUDIT_EXCLUSIVE
            and tpm.volatile.exclusive_audit_session != use.wire.handle):
        raise TpmError(RC.EXCLUSIVE)


def _check_authorization(tpm: "Tpm", ctx: AuthContext, use: SessionUse, code: int,
                         command_hash: Callable[[int], bytes], names: Callable[[], list[bytes]],
                         raw_params: bytes) -> None:
    """One authorization session, in the reference implementation's order (Part 1 19.6):
    lockout, session kind, whether the entity's auth may be used at all, then the proof."""
    session, entity = use.session, use.entity
    assert entity is not None
    if use.handle == _PLATFORM and code in tpm.state.pp_commands and not tpm.volatile.physical_presence:
        raise TpmError(RC.PP, session=use.number)  # this command needs physical presence with platformAuth
    admin = use.hspec is not None and use.hspec.auth in _ADMIN_ROLES
    if session is None:
        auth_used = True
    elif session.is_policy:
        use.include_auth = session.needs_auth_value or session.needs_password
        auth_used = use.include_auth
    else:
        auth_used = use.include_auth
    if auth_used and (entity.is_lockout or entity.da_protected):  # check_allowed looks at nothing else
        tpm.dictionary_attack.check_allowed(entity)
    if session is None or not session.is_policy:
        dup = use.hspec is not None and use.hspec.auth is _DUP  # the DUP role always needs a policy
        if dup or (entity.admin_needs_policy if admin else entity.user_needs_policy):
            raise TpmError(RC.AUTH_TYPE)
        if entity.auth_available is not None and not entity.auth_available(code, False, admin):
            raise TpmError(RC.AUTH_UNAVAILABLE)
    else:
        available = entity.auth_available(code, True, admin) if entity.auth_available else bool(entity.auth_policy)
        if not available:
            raise TpmError(RC.AUTH_UNAVAILABLE)
        _check_policy(tpm, use, code, command_hash(session.auth_hash), names(), raw_params)
    try:
        if session is None or session.needs_password:
            _check_password(tpm, use)
        else:
            _check_hmac(tpm, ctx, use, command_hash(session.auth_hash))
    except TpmError:
        if auth_used and entity.auth_used is not None:
            entity.auth_used(False)
        raise
    if auth_used and entity.auth_used is not None:
        entity.auth_used(True)


def authorize_password(tpm: "Tpm", code: int, handle: int, hspec: "HandleSpec", entity: "Entity",
                       password: bytes) -> None:
    """The one session of a command is a password session (TPM_RS_PW, no nonce, no encrypt, decrypt or
    audit attribute) for its one handle that needs authorization: what ``authorize`` and
    ``_check_authorization`` check for it, in the same order, without an authorization context."""
    if handle == _PLATFORM and code in tpm.state.pp_commands and not tpm.volatile.physical_presence:
        raise TpmError(RC.PP, session=1)
    if entity.is_lockout or entity.da_protected:
        tpm.dictionary_attack.check_allowed(entity)
    auth = hspec.auth
    if auth is _DUP or (entity.admin_needs_policy if auth is _ADMIN else entity.user_needs_policy):
        raise TpmError(RC.AUTH_TYPE)
    available = entity.auth_available
    if available is not None and not available(code, False, auth is _ADMIN):
        raise TpmError(RC.AUTH_UNAVAILABLE)
    auth_used = entity.auth_used
    if not hmac.compare_digest(password.rstrip(b"\x00"), entity.auth_value.rstrip(b"\x00")):
        error = tpm.dictionary_attack.failure(entity, 1)  # recorded first, as _check_password does
        if auth_used is not None:
            auth_used(False)
        raise error
    if auth_used is not None:
        auth_used(True)


def password_response(attributes: int) -> bytes:
    """TPMS_AUTH_RESPONSE of a password session: empty nonce, the attributes with continueSession, empty HMAC."""
    return _PASSWORD_RESPONSES[attributes | CONTINUE]


def _check_hmac(tpm: "Tpm", ctx: AuthContext, use: SessionUse, p_hash: bytes) -> None:
    session = use.session
    assert session is not None
    auth_value = use.entity.auth_value.rstrip(b"\x00") if use.include_auth and use.entity else b""
    expected = session_hmac(session, auth_value, p_hash, use.wire.nonce, session.nonce_tpm,
                            _extra_nonces(ctx, use), use.attributes, not use.wire.hmac)
    if not check_hmac(expected, use.wire.hmac):
        if use.entity is None:
            raise TpmError(RC.AUTH_FAIL, session=use.number)
        raise tpm.dictionary_attack.failure(use.entity, use.number)


def _first_is_tpm2b(spec: "CommandSpec") -> bool:
    return bool(spec.params) and isinstance(spec.params[0][1], (Tpm2b, Tpm2bStruct))


def _crypt_first(use: SessionUse, params: bytes, *, encrypt: bool, auth_value: bytes | None = None) -> bytes:
    """En/decrypt the data of the first (TPM2B) parameter in place."""
    if len(params) < 2:
        raise TpmError(RC.SIZE)
    size = int.from_bytes(params[:2], "big")
    if len(params) < 2 + size:
        raise TpmError(RC.SIZE)
    session = use.session
    assert session is not None
    if encrypt:  # response: nonceNewer = new nonceTPM, nonceOlder = nonceCaller
        newer, older = session.nonce_tpm, session.nonce_caller
    else:
        newer, older = use.wire.nonce, session.nonce_tpm
    data = crypt_parameter(session, use.session_value(auth_value), newer, older, params[2 : 2 + size], encrypt)
    return params[:2] + data + params[2 + size :]


def _check_password(tpm: "Tpm", use: SessionUse) -> None:
    wire = use.wire
    entity = use.entity
    assert entity is not None
    if not hmac.compare_digest(wire.hmac.rstrip(b"\x00"), entity.auth_value.rstrip(b"\x00")):
        raise tpm.dictionary_attack.failure(entity, use.number)


TEMPLATE_COMMANDS = (CC.Create, CC.CreatePrimary, CC.CreateLoaded)


def _template_hash(alg: int, code: int, params: bytes) -> bytes | None:
    """H(the template of Create, CreatePrimary or CreateLoaded): the data of its second parameter,
    a TPM2B after the TPM2B inSensitive (the reference implementation's CompareTemplateHash)."""
    if code not in TEMPLATE_COMMANDS or len(params) < 2:
        return None
    offset = 2 + int.from_bytes(params[:2], "big")
    if len(params) < offset + 2:
        return None
    size = int.from_bytes(params[offset : offset + 2], "big")
    if size > len(params) - offset - 2:
        return None
    return digest(alg, params[offset + 2 : offset + 2 + size])


def _check_policy(tpm: "Tpm", use: SessionUse, code: int, command_cp_hash: bytes, names: list[bytes],
                  raw_params: bytes) -> None:
    """Is every assertion the policy session collected true for this command? (Part 1 19.7)

    In the reference implementation's order, so both answer the same code first.
    """
    session, entity = use.session, use.entity
    assert session is not None and entity is not None
    number = use.number
    if code == CC.PolicySecret and not (session.needs_password or session.needs_auth_value):
        raise TpmError(RC.MODE, session=number)  # PolicySecret proves knowledge of an authValue
    if session.pcr_counter is not None and session.pcr_counter != tpm.volatile.pcr_update_counter:
        raise TpmError(RC.PCR_CHANGED)
    if not entity.auth_policy or not hmac.compare_digest(session.policy_digest, entity.auth_policy):
        raise TpmError(RC.POLICY_FAIL, session=number)
    if entity.auth_policy_alg != session.auth_hash:
        raise TpmError(RC.POLICY_FAIL, session=number)
    if session.expiration_ms is not None and tpm.now_ms() > session.expiration_ms:
        raise TpmError(RC.EXPIRED, session=number)
    if session.command_code is not None:
        if session.command_code != code:
            raise TpmError(RC.POLICY_CC, session=number)
    elif use.hspec is not None and use.hspec.auth in (Auth.ADMIN, Auth.DUP):
        raise TpmError(RC.POLICY_FAIL, session=number)  # ADMIN and DUP roles need PolicyCommandCode
    if session.locality is not None and not _locality_allowed(session.locality, tpm.locality):
        raise TpmError(RC.LOCALITY)
    if session.pp_required and not tpm.volatile.physical_presence:
        raise TpmError(RC.PP, session=number)
    if session.cp_hash is not None and session.cp_hash != command_cp_hash:
        raise TpmError(RC.POLICY_FAIL, session=number)
    if session.name_hash is not None and session.name_hash != digest(session.auth_hash, *names):
        raise TpmError(RC.POLICY_FAIL, session=number)
    if session.template_hash is not None and session.template_hash != _template_hash(session.auth_hash, code,
                                                                                     raw_params):
        raise TpmError(RC.POLICY_FAIL, session=number)
    if session.nv_written is not None:
        index = tpm.state.nv.get(use.handle) if use.handle is not None and use.handle >> 24 == HT.NV_INDEX else None
        if index is None or index.has(TPMA_NV.WRITTEN) != session.nv_written:
            raise TpmError(RC.POLICY_FAIL, session=number)


def _locality_allowed(allowed: int, locality: int) -> bool:
    """TPMA_LOCALITY: a bit per locality 0-4, or one extended locality (32-255) as a value."""
    if locality < 5:
        return allowed < 32 and bool(allowed & (1 << locality))
    return locality > 31 and allowed == locality


def finish_without_sessions(tpm: "Tpm", spec: "CommandSpec", code: int, entities: Sequence["Entity"],
                            handles: Sequence[int], raw_params: bytes, params: bytes) -> None:
    """What ``respond`` does for a command without sessions or with password sessions only: it ends
    an exclusive audit session (if the command could have carried one) and is command-audited."""
    if spec.allow_sessions:
        tpm.volatile.exclusive_audit_session = None
    if is_audited(tpm, code):
        alg = tpm.state.audit_hash_alg
        names = [entity.name_for(handle) for entity, handle in zip(entities, handles)]
        record_command(tpm, cp_hash(alg, code, names, raw_params), rp_hash(alg, code, params))


def respond(tpm: "Tpm", ctx: AuthContext, code: int, params: bytes, tag: int) -> tuple[bytes, bytes]:
    """Finish a successful command (Part 3 5.7, the reference implementation's BuildResponseSession):
    new nonces, encryption of the first response parameter, session and command audit, then the
    response authorization area (empty without sessions). Returns (params, area)."""
    if ctx.audit is None and all(use.session is None for use in ctx.uses):
        # No session or only password sessions: no nonce, no encryption, no HMAC, no session audit;
        # only command audit and the end of an exclusive audit session remain.
        if ctx.allows_sessions:
            tpm.volatile.exclusive_audit_session = None
        if is_audited(tpm, code) and ctx.command_hash is not None:
            alg = tpm.state.audit_hash_alg
            record_command(tpm, ctx.command_hash(alg), rp_hash(alg, code, params))
        if tag != _SESSIONS:
            return params, b""
        return params, b"".join(_PASSWORD_RESPONSES[use.wire.attributes | CONTINUE] for use in ctx.uses)
    sessions = tag == _SESSIONS
    if sessions:
        for use in ctx.uses:
            if use.session is not None:
                use.session.nonce_tpm = tpm.random(len(use.session.nonce_tpm))
        if ctx.encrypt is not None and ctx.encrypt.session is not None:
            use = ctx.encrypt
            current = _current_auth(tpm, use) if use.entity is not None and use.handle is not None else b""
            params = _crypt_first(use, params, encrypt=True, auth_value=current)
    hashes: dict[int, bytes] = {}

    def response_hash(alg: int) -> bytes:
        if alg not in hashes:
            hashes[alg] = rp_hash(alg, code, params)
        return hashes[alg]

    attributes = {use.number: use.attributes for use in ctx.uses}
    _audit_session(tpm, ctx, attributes, response_hash)
    if is_audited(tpm, code) and ctx.command_hash is not None:
        alg = tpm.state.audit_hash_alg
        record_command(tpm, ctx.command_hash(alg), response_hash(alg))
    if not sessions:
        return params, b""
    area = b""
    for use in ctx.uses:
        attrs = attributes[use.number]
        if use.session is None:
            area += b"\x00\x00" + bytes([attrs | CONTINUE]) + b"\x00\x00"
            continue
        session = use.session
        auth_value = _current_auth(tpm, use) if use.include_auth else b""
        if session.is_policy and session.needs_password:
            mac = b""  # PolicyPassword: the caller sent the password in the clear, the answer has no HMAC
        else:
            mac = session_hmac(session, auth_value, response_hash(session.auth_hash), session.nonce_tpm,
                               use.wire.nonce, b"", attrs, not use.wire.hmac)
        area += len(session.nonce_tpm).to_bytes(2, "big") + session.nonce_tpm + bytes([attrs])
        area += len(mac).to_bytes(2, "big") + mac
        if not attrs & CONTINUE:
            tpm.volatile.sessions.pop(use.wire.handle, None)
        elif session.is_policy and use.entity is not None:
            session.reset_policy()
    return params, area


def _audit_session(tpm: "Tpm", ctx: AuthContext, attributes: dict[int, int],
                   response_hash: Callable[[int], bytes]) -> None:
    """Session audit (the reference implementation's UpdateAuditSessionStatus): start or reset the
    audit session's digest, report in auditExclusive whether no other command came between this
    one and the session's previous one, and extend the digest with cpHash || rpHash."""
    use = ctx.audit
    if use is None:
        if ctx.allows_sessions:  # a command that could have carried the audit session ends exclusivity
            tpm.volatile.exclusive_audit_session = None
        return
    session = use.session
    assert session is not None and ctx.command_hash is not None
    handle = use.wire.handle
    if not session.is_audit or use.attributes & AUDIT_RESET:
        session.start_audit()
        tpm.volatile.exclusive_audit_session = handle
    elif tpm.volatile.exclusive_audit_session != handle:
        tpm.volatile.exclusive_audit_session = None
    if tpm.volatile.exclusive_audit_session == handle:
        attributes[use.number] |= AUDIT_EXCLUSIVE
    else:
        attributes[use.number] &= ~AUDIT_EXCLUSIVE
    session.extend_audit(ctx.command_hash(session.auth_hash), response_hash(session.auth_hash))


def _current_auth(tpm: "Tpm", use: SessionUse) -> bytes:
    """The entity's auth value after the command: a changed auth (HierarchyChangeAuth,
    NV_ChangeAuth) keys the response HMAC with the new value, as Part 1 19.6.5 requires."""
    assert use.entity is not None and use.handle is not None
    try:
        return ENTITY_RESOLVERS[use.handle >> 24](tpm, use.handle).auth_value.rstrip(b"\x00")
    except TpmError:  # the entity is gone (e.g. undefined by this command)
        return use.entity.auth_value.rstrip(b"\x00")


def session_kind_matches(handle: int, session: AuthSession) -> bool:
    """Whether a session handle's type (HMAC or policy) is the type of the session it names."""
    return (handle >> 24 == HT.POLICY_SESSION) == session.is_policy
