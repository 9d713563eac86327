"""Context Management (Part 3, section 28): ContextSave, ContextLoad, FlushContext, EvictControl.

A saved context is encrypted (AES-CFB) and integrity-protected (HMAC) under keys
derived from the hierarchy's proof, so it opens only on the TPM that saved it and
only while that hierarchy is unchanged. Session and stClear contexts also bind the
TPM's reset count: a TPM Reset makes them stale. A session context can be loaded
once per save (its sequence number must be the latest one), which stops replay.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

from vtpm.constants import ALG, CC, HT, RC, RH, TPMA_OBJECT, TRANSIENT_FIRST
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES, hmac_digest, kdfa
from vtpm.entities.hierarchy import hierarchy_enabled, hierarchy_proof
from vtpm.entities.object_table import MAX_LOADED_OBJECTS, OBJECT_HANDLE, allocate_transient, get_object
from vtpm.entities.sequences import HashSequence
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPMS_CONTEXT
from vtpm.marshal.primitives import U32
from vtpm.objects import LoadedObject, Public, Sensitive
from vtpm.sessions import CFB, AuthSession, SymDef

if TYPE_CHECKING:
    from vtpm.engine import Tpm

CONTEXT_HASH = ALG.SHA256
SAVED_OBJECT = 0x80000000
SAVED_SEQUENCE = 0x80000001
SAVED_ST_CLEAR = 0x80000002
OWNER_PERSISTENT = range(0x81000000, 0x81800000)
PLATFORM_PERSISTENT = range(0x81800000, 0x82000000)
MAX_PERSISTENT = 7


def _keys(tpm: Tpm, hierarchy: int, sequence: int, saved_handle: int) -> tuple[bytes, bytes, bytes]:
    proof = hierarchy_proof(tpm, hierarchy)
    context = sequence.to_bytes(8, "big") + saved_handle.to_bytes(4, "big")
    material = kdfa(CONTEXT_HASH, proof, b"CONTEXT", context, b"", (32 + 16) * 8)
    integrity = kdfa(CONTEXT_HASH, proof, b"INTEGRITY", b"", b"", HASHES[CONTEXT_HASH].size * 8)
    return material[:32], material[32:], integrity


def _reset_value(tpm: Tpm, saved_handle: int) -> bytes:
    if saved_handle in (SAVED_OBJECT,):
        return b""
    return tpm.state.reset_count.to_bytes(4, "big")


def _seal(tpm: Tpm, hierarchy: int, saved_handle: int, payload: bytes) -> bytes:
    tpm.state.context_counter += 1
    sequence = tpm.state.context_counter
    key, iv, integrity_key = _keys(tpm, hierarchy, sequence, saved_handle)
    enc = Cipher(algorithms.AES(key), CFB(iv)).encryptor()
    encrypted = enc.update(payload) + enc.finalize()
    mac = hmac_digest(CONTEXT_HASH, integrity_key, _reset_value(tpm, saved_handle), sequence.to_bytes(8, "big"),
                      saved_handle.to_bytes(4, "big"), encrypted)
    blob = len(mac).to_bytes(2, "big") + mac + encrypted
    tpm.mark_dirty()  # the context counter is persistent
    return TPMS_CONTEXT.build({"sequence": sequence, "savedHandle": saved_handle, "hierarchy": hierarchy,
                               "contextBlob": blob})


def _open(tpm: Tpm, context: Any) -> bytes:
    blob = context.contextBlob
    if len(blob) < 2:
        raise TpmError(RC.SIZE, param=1)
    size = int.from_bytes(blob[:2], "big")
    mac, encrypted = blob[2 : 2 + size], blob[2 + size :]
    key, iv, integrity_key = _keys(tpm, context.hierarchy, context.sequence, context.savedHandle)
    expected = hmac_digest(CONTEXT_HASH, integrity_key, _reset_value(tpm, context.savedHandle),
                           context.sequence.to_bytes(8, "big"), context.savedHandle.to_bytes(4, "big"), encrypted)
    if not hmac.compare_digest(mac, expected):
        raise TpmError(RC.INTEGRITY, param=1)
    dec = Cipher(algorithms.AES(key), CFB(iv)).decryptor()
    return dec.update(encrypted) + dec.finalize()


def _session_payload(session: AuthSession) -> bytes:
    fields = dataclasses.asdict(session)
    return json.dumps({k: (v.hex() if isinstance(v, bytes) else v) for k, v in fields.items()}).encode()


def _session_from(payload: bytes) -> AuthSession:
    raw = json.loads(payload)
    sym = SymDef(**raw.pop("symmetric"))
    values = {k: (bytes.fromhex(v) if k in _BYTES_FIELDS and v is not None else v) for k, v in raw.items()}
    return AuthSession(symmetric=sym, **values)


_BYTES_FIELDS = {f.name for f in dataclasses.fields(AuthSession) if "bytes" in str(f.type)}


def _object_payload(obj: LoadedObject) -> bytes:
    return json.dumps({
        "public": obj.public.raw.hex(),
        "sensitive": obj.sensitive.build().hex() if obj.sensitive else "",
        "qualified_name": obj.qualified_name.hex(),
    }).encode()


@command(CC.ContextSave, handles=[handle_spec("saveHandle", types=[HT.TRANSIENT, HT.HMAC_SESSION, HT.POLICY_SESSION])])
def context_save(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ContextSave (Part 3 28.2): seal a loaded object or session into a TPMS_CONTEXT (a saved session leaves the
    loaded set but keeps its slot); TPM_RC_TYPE for a sequence object, which this TPM does not save."""
    handle = cmd.handles[0]
    if handle >> 24 == HT.TRANSIENT:
        obj = tpm.volatile.objects.get(handle)
        if isinstance(obj, HashSequence):
            raise TpmError(RC.TYPE, handle=1)  # sequence contexts are not saved by this TPM
        assert isinstance(obj, LoadedObject)
        saved = SAVED_ST_CLEAR if obj.public.has(TPMA_OBJECT.ST_CLEAR) else SAVED_OBJECT
        return Response(params=_seal(tpm, obj.hierarchy, saved, _object_payload(obj)))
    session = tpm.volatile.sessions.pop(handle)
    blob = _seal(tpm, RH.NULL, handle, _session_payload(session))
    tpm.volatile.saved_sessions[handle] = tpm.state.context_counter
    return Response(params=blob)


@command(CC.ContextLoad, params=[("context", TPMS_CONTEXT)])
def context_load(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ContextLoad (Part 3 28.3): verify and decrypt a TPMS_CONTEXT and load what it holds; a context that does not
    verify, is of a disabled hierarchy or replays an older save of a session is refused."""
    context = cmd.params.context
    saved = context.savedHandle
    kind = saved >> 24
    if kind in (HT.HMAC_SESSION, HT.POLICY_SESSION):
        if context.hierarchy != RH.NULL:
            raise TpmError(RC.HIERARCHY, param=1)
        if tpm.volatile.saved_sessions.get(saved) != context.sequence:
            raise TpmError(RC.HANDLE, param=1)  # not saved, or an older save (replay)
        session = _session_from(_open(tpm, context))
        del tpm.volatile.saved_sessions[saved]
        tpm.volatile.sessions[saved] = session
        return Response(handles=(saved,))
    if saved not in (SAVED_OBJECT, SAVED_ST_CLEAR):
        raise TpmError(RC.HANDLE, param=1)
    if context.hierarchy not in (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL):
        raise TpmError(RC.HIERARCHY, param=1)
    if not hierarchy_enabled(tpm, context.hierarchy):
        raise TpmError(RC.HIERARCHY, param=1)
    payload = json.loads(_open(tpm, context))
    sensitive = Sensitive.parse_tpm2b(bytes.fromhex(payload["sensitive"])) if payload["sensitive"] else None
    obj = LoadedObject(Public.parse(bytes.fromhex(payload["public"])), sensitive, context.hierarchy,
                       bytes.fromhex(payload["qualified_name"]))
    return Response(handles=(allocate_transient(tpm, obj),))


@command(CC.FlushContext, params=[("flushHandle", U32)])
def flush_context(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_FlushContext (Part 3 28.4): drop a loaded object or a loaded or saved session; TPM_RC_HANDLE when nothing is
    there, TPM_RC_VALUE for a handle of another type."""
    handle = cmd.params.flushHandle
    kind = handle >> 24
    if kind == HT.TRANSIENT:
        if handle >= TRANSIENT_FIRST + MAX_LOADED_OBJECTS:  # outside TPMI_DH_CONTEXT's range
            raise TpmError(RC.VALUE, param=1)
        if tpm.volatile.objects.pop(handle, None) is None:
            raise TpmError(RC.HANDLE, param=1)
        return Response()
    if kind in (HT.HMAC_SESSION, HT.POLICY_SESSION):
        found = tpm.volatile.sessions.pop(handle, None) is not None
        found = tpm.volatile.saved_sessions.pop(handle, None) is not None or found
        if not found:
            raise TpmError(RC.HANDLE, param=1)
        return Response()
    raise TpmError(RC.VALUE, param=1)


@command(
    CC.EvictControl,
    handles=[handle_spec("auth", Auth.USER, permanent=(RH.OWNER, RH.PLATFORM)), OBJECT_HANDLE],
    params=[("persistentHandle", U32)],
)
def evict_control(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_EvictControl (Part 3 28.5): make a loaded object persistent at ``persistentHandle`` or remove a persistent
    one, within the owner's or platform's range of persistent handles."""
    auth, handle = cmd.handles
    target = cmd.params.persistentHandle
    allowed = OWNER_PERSISTENT if auth == RH.OWNER else PLATFORM_PERSISTENT
    store = tpm.state.persistent
    if handle >> 24 == HT.PERSISTENT:  # remove a persistent object
        if handle != target:
            raise TpmError(RC.HANDLE, param=1)
        if handle not in allowed:
            raise TpmError(RC.HIERARCHY, handle=2)
        store.pop(handle, None)
        tpm.volatile.persistent_cache.pop(handle, None)
        tpm.mark_dirty()
        return Response()
    obj = get_object(tpm, handle, 2)
    if target not in allowed:
        raise TpmError(RC.RANGE, param=1)
    if obj.public.has(TPMA_OBJECT.ST_CLEAR):
        raise TpmError(RC.ATTRIBUTES, handle=2)
    if obj.hierarchy == RH.NULL:
        raise TpmError(RC.HIERARCHY, handle=2)
    if (auth == RH.PLATFORM) != (obj.hierarchy == RH.PLATFORM):
        raise TpmError(RC.HIERARCHY, handle=2)
    if target in store:
        raise TpmError(RC.NV_DEFINED)
    if len(store) >= MAX_PERSISTENT:
        raise TpmError(RC.NV_SPACE)
    store[target] = {
        "public": obj.public.raw,
        "sensitive": obj.sensitive.build() if obj.sensitive else b"",
        "hierarchy": obj.hierarchy,
        "qualified_name": obj.qualified_name,
    }
    tpm.mark_dirty()
    return Response()
