"""Object commands (Part 3, section 12 and 28.5): CreatePrimary, Create, Load, ReadPublic,
Unseal, ObjectChangeAuth, EvictControl; persistent objects."""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import ALG, CC, HT, RC, RH, TPMA_OBJECT
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES
from vtpm.entities.creation import check_sensitive_data, creation_data, primary_material, qualified_name
from vtpm.entities.hierarchy import OBJECT_HIERARCHIES
from vtpm.entities.keys import storage_parent
from vtpm.entities.object_table import OBJECT_HANDLE, allocate_transient, get_object
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_PRIVATE, TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE
from vtpm.marshal.primitives import U32
from vtpm.marshal.structures import TPM2B_AUTH, TPM2B_DATA, TPM2B_NAME, TPM2B_SENSITIVE_DATA, TPML_PCR_SELECTION
from vtpm.objects import (
    LoadedObject,
    Public,
    Sensitive,
    check_binding,
    check_template,
    generate,
    unwrap_private,
    wrap_private,
)

if TYPE_CHECKING:
    from vtpm.engine import Tpm

A = TPMA_OBJECT
OWNER_PERSISTENT = range(0x81000000, 0x81800000)
PLATFORM_PERSISTENT = range(0x81800000, 0x82000000)
MAX_PERSISTENT = 7


@command(
    CC.CreatePrimary,
    handles=[handle_spec("primaryHandle", Auth.USER, permanent=OBJECT_HIERARCHIES)],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC), ("outsideInfo", TPM2B_DATA),
            ("creationPCR", TPML_PCR_SELECTION)],
    response_tpm2b=True,
)
def create_primary(tpm: Tpm, cmd: Command) -> Response:
    hierarchy = cmd.handles[0]
    p = cmd.params
    template = Public.from_container(p.inPublic)
    check_template(template, param=2, primary=True)
    check_sensitive_data(template, p.inSensitive.data)
    public, secret, seed_value = primary_material(tpm, hierarchy, template, p.inSensitive.data)
    sensitive = Sensitive(public.type, p.inSensitive.userAuth.rstrip(b"\x00"), seed_value, secret)
    parent_qn = hierarchy.to_bytes(4, "big")
    obj = LoadedObject(public, sensitive, hierarchy, qualified_name(parent_qn, public))
    handle = allocate_transient(tpm, obj)
    creation = creation_data(tpm, public, public.name, hierarchy, parent_qn, parent_qn, ALG.NULL, p.outsideInfo, p.creationPCR)
    body = len(public.raw).to_bytes(2, "big") + public.raw + creation + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))


PARENT = handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT])


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
    parent = storage_parent(tpm, cmd.handles[0])
    p = cmd.params
    template = Public.from_container(p.inPublic)
    check_template(template, param=2, primary=False)
    _check_parent_rules(parent, template, 2)
    check_sensitive_data(template, p.inSensitive.data)
    public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
    sensitive = Sensitive(public.type, p.inSensitive.userAuth.rstrip(b"\x00"), seed_value, secret)
    private = wrap_private(parent, sensitive, public.name)
    creation = creation_data(tpm, public, public.name, parent.hierarchy, parent.name, parent.qualified_name,
                         parent.public.name_alg, p.outsideInfo, p.creationPCR)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + creation
    return Response(params=body)


@command(CC.Load, handles=[PARENT], params=[("inPrivate", TPM2B_PRIVATE), ("inPublic", TPM2B_PUBLIC)],
         response_tpm2b=True)
def load(tpm: Tpm, cmd: Command) -> Response:
    parent = storage_parent(tpm, cmd.handles[0])
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
    parent = storage_parent(tpm, cmd.handles[1])
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


@command(
    CC.CreateLoaded,
    handles=[handle_spec("parentHandle", Auth.USER, types=[HT.TRANSIENT, HT.PERSISTENT], permanent=OBJECT_HIERARCHIES)],
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
    check_sensitive_data(template, p.inSensitive.data)
    auth = p.inSensitive.userAuth.rstrip(b"\x00")
    if primary:
        public, secret, seed_value = primary_material(tpm, parent_handle, template, p.inSensitive.data)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent_handle, qualified_name(parent_handle.to_bytes(4, "big"), public))
        private = b""
    else:
        parent = storage_parent(tpm, parent_handle)
        _check_parent_rules(parent, template, 2)
        public, secret, seed_value = generate(template, p.inSensitive.data, tpm.random)
        sensitive = Sensitive(public.type, auth, seed_value, secret)
        obj = LoadedObject(public, sensitive, parent.hierarchy, qualified_name(parent.qualified_name, public))
        private = wrap_private(parent, sensitive, public.name)
    handle = allocate_transient(tpm, obj)
    body = TPM2B_PRIVATE.build(private) + len(public.raw).to_bytes(2, "big") + public.raw + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))
