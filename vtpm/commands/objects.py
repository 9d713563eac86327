"""Object commands (Part 3, section 12 and 28.5): CreatePrimary, Create, Load, ReadPublic,
Unseal, ObjectChangeAuth, EvictControl; persistent objects."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm.commands.hash import allocate_transient, proof_for
from vtpm.constants import ALG, CC, HT, RC, RH, ST, TPMA_OBJECT
from vtpm.core import Auth, Command, Entity, Response, command, entity_resolver, handle_spec
from vtpm.crypto import HASHES, digest, hmac_digest
from vtpm.errors import TpmError
from vtpm.marshal.objects import (
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPM2B_SENSITIVE_CREATE,
    TPMS_CREATION_DATA,
    TPMT_TK,
)
from vtpm.marshal.primitives import U32
from vtpm.marshal.structures import TPM2B_AUTH, TPM2B_DATA, TPM2B_DIGEST, TPM2B_NAME, TPM2B_SENSITIVE_DATA, TPML_PCR_SELECTION
from vtpm.objects import (
    KdfStream,
    LoadedObject,
    Public,
    Sensitive,
    check_binding,
    check_template,
    generate,
    primary_context,
    unwrap_private,
    wrap_private,
)

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
HIERARCHIES = (RH.OWNER, RH.ENDORSEMENT, RH.PLATFORM, RH.NULL)
OWNER_PERSISTENT = range(0x81000000, 0x81800000)
PLATFORM_PERSISTENT = range(0x81800000, 0x82000000)
MAX_PERSISTENT = 7
PRIMARY_CACHE_SIZE = 16
OBJECT_HANDLE = handle_spec("objectHandle", types=[HT.TRANSIENT, HT.PERSISTENT])


def seed_for(tpm: Tpm, hierarchy: int) -> bytes:
    return {
        RH.OWNER: tpm.state.sps,
        RH.ENDORSEMENT: tpm.state.eps,
        RH.PLATFORM: tpm.state.pps,
    }.get(hierarchy, tpm.volatile.null_seed)


def get_object(tpm: Tpm, handle: int, number: int = 1) -> LoadedObject:
    """A loaded transient object or a persistent object (loaded from NV on demand)."""
    if handle >> 24 == HT.PERSISTENT:
        return _persistent(tpm, handle)
    obj = tpm.volatile.objects.get(handle)
    if not isinstance(obj, LoadedObject):
        raise TpmError(RC.HANDLE, handle=number)
    return obj


def _persistent(tpm: Tpm, handle: int) -> LoadedObject:
    cache = tpm.volatile.persistent_cache
    if handle in cache:
        return cache[handle]
    entry = tpm.state.persistent.get(handle)
    if entry is None:
        raise TpmError(RC.HANDLE)
    sensitive = Sensitive.parse_tpm2b(entry["sensitive"]) if entry.get("sensitive") else None
    obj = LoadedObject(Public.parse(entry["public"]), sensitive, entry["hierarchy"], entry["qualified_name"])
    cache[handle] = obj
    return obj


@entity_resolver(HT.PERSISTENT)
def persistent_entity(tpm: Tpm, handle: int) -> Entity:
    obj = _persistent(tpm, handle)
    if not _hierarchy_enabled(tpm, obj.hierarchy):
        raise TpmError(RC.HANDLE)
    return obj.entity()


def _hierarchy_enabled(tpm: Tpm, hierarchy: int) -> bool:
    from vtpm.commands.hierarchy import hierarchy_enabled

    return hierarchy_enabled(tpm, hierarchy)


def qualified_name(parent_qn: bytes, public: Public) -> bytes:
    alg = public.name_alg
    return alg.to_bytes(2, "big") + digest(alg, parent_qn, public.name)


def pcr_digest(tpm: Tpm, alg: int, selection: Any) -> bytes:
    """Digest of the selected PCR values, bank by bank, PCR by PCR (Part 3 18.4, 12.1)."""
    h = HASHES[alg]
    import hashlib

    state = hashlib.new(h.name)
    for entry in selection:
        bank = tpm.volatile.pcrs.get(entry.hash)
        if bank is None:
            continue
        bits = entry.pcrSelect
        for index in range(min(len(bits) * 8, 24)):
            if bits[index // 8] >> (index % 8) & 1:
                state.update(bank[index])
    return state.digest()


def _creation(tpm: Tpm, public: Public, name: bytes, hierarchy: int, parent_name: bytes, parent_qn: bytes,
              parent_alg: int, outside: bytes, selection: Any) -> bytes:
    """creationData, creationHash and creationTicket (Part 3 12.1)."""
    data = TPMS_CREATION_DATA.build({
        "pcrSelect": selection,
        "pcrDigest": pcr_digest(tpm, public.name_alg, selection),
        "locality": 1 << tpm.locality if tpm.locality < 5 else tpm.locality,
        "parentNameAlg": parent_alg,
        "parentName": parent_name,
        "parentQualifiedName": parent_qn,
        "outsideInfo": outside,
    })
    creation_hash = digest(public.name_alg, data)
    if hierarchy == RH.NULL:
        ticket = {"tag": ST.CREATION, "hierarchy": RH.NULL, "digest": b""}
    else:
        mac = hmac_digest(public.name_alg, proof_for(tpm, hierarchy), ST.CREATION.to_bytes(2, "big"), name, creation_hash)
        ticket = {"tag": ST.CREATION, "hierarchy": hierarchy, "digest": mac}
    return len(data).to_bytes(2, "big") + data + TPM2B_DIGEST.build(creation_hash) + TPMT_TK.build(ticket)


def _check_hierarchy(tpm: Tpm, hierarchy: int) -> None:
    if not _hierarchy_enabled(tpm, hierarchy):
        raise TpmError(RC.HIERARCHY, handle=1)


def _primary_material(tpm: Tpm, hierarchy: int, template: Public, data: bytes) -> tuple[Public, bytes, bytes]:
    seed = seed_for(tpm, hierarchy)
    context = primary_context(template, data)
    cache_key = digest(ALG.SHA256, seed, context).hex()
    cache = tpm.state.primary_cache
    if template.type == ALG.RSA and cache_key in cache:
        entry = cache[cache_key]
        area = template.area
        area.unique = entry["n"]
        cache[cache_key] = cache.pop(cache_key)  # most recently used last
        return Public.from_container(area), entry["p"], entry["seed_value"]
    random = KdfStream(template.name_alg, seed, b"vTPM primary object", context)
    public, secret, seed_value = generate(template, data, random)
    if template.type == ALG.RSA and hierarchy != RH.NULL:
        cache[cache_key] = {"n": public.area.unique, "p": secret, "seed_value": seed_value}
        while len(cache) > PRIMARY_CACHE_SIZE:
            cache.pop(next(iter(cache)))
        tpm.mark_dirty()
    return public, secret, seed_value


@command(
    CC.CreatePrimary,
    handles=[handle_spec("primaryHandle", Auth.USER, permanent=HIERARCHIES)],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC), ("outsideInfo", TPM2B_DATA),
            ("creationPCR", TPML_PCR_SELECTION)],
    response_tpm2b=True,
)
def create_primary(tpm: Tpm, cmd: Command) -> Response:
    hierarchy = cmd.handles[0]
    p = cmd.params
    template = Public.from_container(p.inPublic)
    check_template(template, param=2, primary=True)
    _check_sensitive_data(template, p.inSensitive.data)
    public, secret, seed_value = _primary_material(tpm, hierarchy, template, p.inSensitive.data)
    sensitive = Sensitive(public.type, p.inSensitive.userAuth.rstrip(b"\x00"), seed_value, secret)
    parent_qn = hierarchy.to_bytes(4, "big")
    obj = LoadedObject(public, sensitive, hierarchy, qualified_name(parent_qn, public))
    handle = allocate_transient(tpm, obj)
    creation = _creation(tpm, public, public.name, hierarchy, parent_qn, parent_qn, ALG.NULL, p.outsideInfo, p.creationPCR)
    body = len(public.raw).to_bytes(2, "big") + public.raw + creation + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))


def _check_sensitive_data(public: Public, data: bytes) -> None:
    origin = public.has(A.SENSITIVE_DATA_ORIGIN)
    if public.type in (ALG.RSA, ALG.ECC):
        if data:
            raise TpmError(RC.VALUE, param=1)
        if not origin:
            raise TpmError(RC.ATTRIBUTES, param=2)
    elif data and origin:
        raise TpmError(RC.ATTRIBUTES, param=2)
    elif not data and not origin and public.type == ALG.KEYEDHASH:
        raise TpmError(RC.ATTRIBUTES, param=2)


PARENT = handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])


def _storage_parent(tpm: Tpm, handle: int) -> LoadedObject:
    parent = get_object(tpm, handle)
    if not parent.public.is_storage_parent or parent.sensitive is None:
        raise TpmError(RC.TYPE, handle=1)
    return parent


def _check_parent_rules(parent: LoadedObject, public: Public, param: int) -> None:
    if public.has(A.FIXED_TPM) and not parent.public.has(A.FIXED_TPM):
        raise TpmError(RC.ATTRIBUTES, param=param)
    if public.has(A.FIXED_PARENT) != public.has(A.FIXED_TPM) and public.has(A.FIXED_TPM):
        raise TpmError(RC.ATTRIBUTES, param=param)


@command(
    CC.Create,
    handles=[PARENT],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC), ("outsideInfo", TPM2B_DATA),
            ("creationPCR", TPML_PCR_SELECTION)],
    response_tpm2b=True,
)
def create(tpm: Tpm, cmd: Command) -> Response:
    parent = _storage_parent(tpm, cmd.handles[0])
    p = cmd.params
    template = Public.from_container(p.inPublic)
    check_template(template, param=2, primary=False)
    _check_parent_rules(parent, template, 2)
    _check_sensitive_data(template, p.inSensitive.data)
    public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
    sensitive = Sensitive(public.type, p.inSensitive.userAuth.rstrip(b"\x00"), seed_value, secret)
    private = wrap_private(parent, sensitive, public.name)
    creation = _creation(tpm, public, public.name, parent.hierarchy, parent.name, parent.qualified_name,
                         parent.public.name_alg, p.outsideInfo, p.creationPCR)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + creation
    return Response(params=body)


@command(CC.Load, handles=[PARENT], params=[("inPrivate", TPM2B_PRIVATE), ("inPublic", TPM2B_PUBLIC)],
         response_tpm2b=True)
def load(tpm: Tpm, cmd: Command) -> Response:
    parent = _storage_parent(tpm, cmd.handles[0])
    public = Public.from_container(cmd.params.inPublic)
    check_template(public, param=2, primary=False)
    _check_parent_rules(parent, public, 2)
    sensitive = unwrap_private(parent, cmd.params.inPrivate, public.name, param=1)
    obj = LoadedObject(public, sensitive, parent.hierarchy, qualified_name(parent.qualified_name, public))
    try:
        check_binding(obj)
    except TpmError as exc:
        raise exc.at_param(2) from None
    handle = allocate_transient(tpm, obj)
    return Response(params=TPM2B_NAME.build(public.name), handles=(handle,))


@command(CC.ReadPublic, handles=[OBJECT_HANDLE], response_tpm2b=True)
def read_public(tpm: Tpm, cmd: Command) -> Response:
    obj = get_object(tpm, cmd.handles[0])
    raw = obj.public.raw
    body = len(raw).to_bytes(2, "big") + raw + TPM2B_NAME.build(obj.name) + TPM2B_NAME.build(obj.qualified_name)
    return Response(params=body)


@command(CC.Unseal, handles=[handle_spec("itemHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])],
         response_tpm2b=True)
def unseal(tpm: Tpm, cmd: Command) -> Response:
    obj = get_object(tpm, cmd.handles[0])
    if obj.public.type != ALG.KEYEDHASH:
        raise TpmError(RC.TYPE, handle=1)
    if obj.public.attributes & (A.DECRYPT | A.SIGN_ENCRYPT | A.RESTRICTED):
        raise TpmError(RC.ATTRIBUTES, handle=1)
    assert obj.sensitive is not None
    return Response(params=TPM2B_SENSITIVE_DATA.build(obj.sensitive.secret))


@command(
    CC.ObjectChangeAuth,
    handles=[handle_spec("objectHandle", Auth.ADMIN, types=[HT.TRANSIENT]),
             handle_spec("parentHandle", types=[HT.TRANSIENT, HT.PERSISTENT])],
    params=[("newAuth", TPM2B_AUTH)],
    response_tpm2b=True,
)
def object_change_auth(tpm: Tpm, cmd: Command) -> Response:
    obj = get_object(tpm, cmd.handles[0])
    parent = _storage_parent(tpm, cmd.handles[1])
    if obj.qualified_name != qualified_name(parent.qualified_name, obj.public):
        raise TpmError(RC.TYPE, handle=2)
    if len(cmd.params.newAuth) > HASHES[obj.public.name_alg].size:
        raise TpmError(RC.SIZE, param=1)
    assert obj.sensitive is not None
    changed = Sensitive(obj.sensitive.sensitive_type, cmd.params.newAuth.rstrip(b"\x00"), obj.sensitive.seed_value,
                        obj.sensitive.secret)
    return Response(params=TPM2B_PRIVATE.build(wrap_private(parent, changed, obj.name)))


@command(
    CC.EvictControl,
    handles=[handle_spec("auth", Auth.USER, permanent=(RH.OWNER, RH.PLATFORM)), OBJECT_HANDLE],
    params=[("persistentHandle", U32)],
)
def evict_control(tpm: Tpm, cmd: Command) -> Response:
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
    if obj.public.has(A.ST_CLEAR):
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


def clear_hierarchy_objects(tpm: Tpm, hierarchies: tuple[int, ...]) -> None:
    """TPM2_Clear (owner) and ChangeEPS (endorsement) evict the hierarchy's persistent objects."""
    for handle, entry in list(tpm.state.persistent.items()):
        if entry["hierarchy"] in hierarchies:
            del tpm.state.persistent[handle]
            tpm.volatile.persistent_cache.pop(handle, None)
    for handle, obj in list(tpm.volatile.objects.items()):
        if isinstance(obj, LoadedObject) and obj.hierarchy in hierarchies:
            del tpm.volatile.objects[handle]
    tpm.state.primary_cache.clear()
    tpm.mark_dirty()



@command(
    CC.CreateLoaded,
    handles=[handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=HIERARCHIES)],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC)],
    response_tpm2b=True,
)
def create_loaded(tpm: Tpm, cmd: Command) -> Response:
    """Create and load in one step: a primary under a hierarchy, or an ordinary child of a storage parent."""
    parent_handle = cmd.handles[0]
    p = cmd.params
    template = Public.from_container(p.inPublic)
    primary = parent_handle >> 24 == HT.PERMANENT
    check_template(template, param=2, primary=primary)
    _check_sensitive_data(template, p.inSensitive.data)
    auth = p.inSensitive.userAuth.rstrip(b"\x00")
    if primary:
        public, secret, seed_value = _primary_material(tpm, parent_handle, template, p.inSensitive.data)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent_handle, qualified_name(parent_handle.to_bytes(4, "big"), public))
        private = b""
    else:
        parent = _storage_parent(tpm, parent_handle)
        _check_parent_rules(parent, template, 2)
        public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent.hierarchy, qualified_name(parent.qualified_name, public))
        private = wrap_private(parent, sensitive, public.name)
    handle = allocate_transient(tpm, obj)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))
