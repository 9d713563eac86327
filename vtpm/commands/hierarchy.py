"""Hierarchy Commands (Part 3, section 24): CreatePrimary, HierarchyControl,
SetPrimaryPolicy, ChangePPS, ChangeEPS, Clear, ClearControl, HierarchyChangeAuth.
The hierarchies themselves are in vtpm.entities.hierarchy."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING

from vtpm.constants import ALG, CC, RC, RH
from vtpm.core import Auth, Command, Response, command, handle_spec
from vtpm.crypto import HASHES
from vtpm.entities.creation import check_sensitive_data, creation_data, primary_material, qualified_name
from vtpm.entities.hierarchy import OBJECT_HIERARCHIES, renew, set_auth, set_enabled, stored_hierarchy
from vtpm.entities.nv import clear_owner_indices
from vtpm.entities.object_table import allocate_transient, clear_hierarchy_objects
from vtpm.errors import TpmError
from vtpm.marshal.objects import TPM2B_PUBLIC, TPM2B_SENSITIVE_CREATE
from vtpm.marshal.primitives import U8, U32, OneOf
from vtpm.marshal.structures import (
    TPM2B_AUTH,
    TPM2B_DATA,
    TPM2B_DIGEST,
    TPM2B_NAME,
    TPMI_ALG_HASH_NULL,
    TPML_PCR_SELECTION,
)
from vtpm.objects import LoadedObject, Public, Sensitive, check_template
from vtpm.state import PROOF_SIZE, Hierarchy

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@command(
    CC.CreatePrimary,
    handles=[handle_spec("primaryHandle", Auth.USER, permanent=OBJECT_HIERARCHIES)],
    params=[("inSensitive", TPM2B_SENSITIVE_CREATE), ("inPublic", TPM2B_PUBLIC), ("outsideInfo", TPM2B_DATA),
            ("creationPCR", TPML_PCR_SELECTION)],
    response_tpm2b=True,
)
def create_primary(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_CreatePrimary (Part 3 24.1): derive a primary object from the hierarchy's seed and the template, load it,
    and return it with its creation data and ticket."""
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
    creation = creation_data(tpm, public, public.name, hierarchy, parent_qn, parent_qn, ALG.NULL, p.outsideInfo,
                             p.creationPCR)
    body = len(public.raw).to_bytes(2, "big") + public.raw + creation + TPM2B_NAME.build(public.name)
    return Response(params=body, handles=(handle,))


HIERARCHY_AUTH = (RH.LOCKOUT, RH.ENDORSEMENT, RH.OWNER, RH.PLATFORM)
TPMI_YES_NO = OneOf(U8, [0, 1], RC.VALUE)
ENABLE_TARGETS = (RH.ENDORSEMENT, RH.OWNER, RH.PLATFORM, RH.PLATFORM_NV)


@command(
    CC.HierarchyControl,
    handles=[handle_spec("authHandle", Auth.USER, permanent=(RH.PLATFORM, RH.OWNER, RH.ENDORSEMENT))],
    params=[("enable", OneOf(U32, ENABLE_TARGETS, RC.VALUE)), ("state", TPMI_YES_NO)],
)
def hierarchy_control(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_HierarchyControl (Part 3 24.2): enable or disable a hierarchy (or platform NV); the owner and endorsement
    may only disable their own, TPM_RC_AUTH_TYPE otherwise."""
    auth, target, enable = cmd.handles[0], cmd.params.enable, bool(cmd.params.state)
    volatile = tpm.volatile
    if auth != RH.PLATFORM:
        # Owner/endorsement may only disable their own hierarchy.
        if enable or target != auth:
            raise TpmError(RC.AUTH_TYPE, handle=1)
    elif enable and target == RH.PLATFORM:
        raise TpmError(RC.AUTH_TYPE, handle=1)
    if enable and target == RH.PLATFORM_NV and not volatile.ph_enable:
        raise TpmError(RC.HIERARCHY, param=1)
    set_enabled(tpm, target, enable)
    return Response()


@command(
    CC.SetPrimaryPolicy,
    handles=[handle_spec("authHandle", Auth.USER, permanent=HIERARCHY_AUTH)],
    params=[("authPolicy", TPM2B_DIGEST), ("hashAlg", TPMI_ALG_HASH_NULL)],
)
def set_primary_policy(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_SetPrimaryPolicy (Part 3 24.3): set a hierarchy's authPolicy; TPM_RC_SIZE when its size is not the digest
    size of hashAlg."""
    policy, alg = cmd.params.authPolicy, cmd.params.hashAlg
    expected = 0 if alg == ALG.NULL else HASHES[alg].size
    if len(policy) != expected:
        raise TpmError(RC.SIZE, param=1)
    target = stored_hierarchy(tpm, cmd.handles[0])
    target.policy, target.policy_alg = policy, alg
    tpm.mark_dirty()
    return Response()


@command(CC.ChangePPS, handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])])
def change_pps(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ChangePPS (Part 3 24.4): a new platform seed; platform objects loaded or persistent are gone."""
    renew(tpm, RH.PLATFORM)
    clear_hierarchy_objects(tpm, (RH.PLATFORM,))
    return Response()


@command(CC.ChangeEPS, handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])])
def change_eps(tpm: Tpm, cmd: Command) -> Response:
    """A new endorsement seed: every endorsement key (the EK included) changes."""
    renew(tpm, RH.ENDORSEMENT)
    clear_hierarchy_objects(tpm, (RH.ENDORSEMENT,))
    return Response()


@command(CC.Clear, handles=[handle_spec("authHandle", Auth.USER, permanent=(RH.LOCKOUT, RH.PLATFORM))])
def clear(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_Clear (Part 3 24.6): a new storage seed and proofs, empty owner and endorsement and lockout authorizations,
    owner NV indices and objects removed; TPM_RC_DISABLED after ClearControl(YES)."""
    state = tpm.state
    if state.disable_clear:
        raise TpmError(RC.DISABLED)
    renew(tpm, RH.OWNER)
    state.eh_proof = secrets.token_bytes(PROOF_SIZE)
    state.endorsement = Hierarchy()
    state.lockout = Hierarchy()
    tpm.volatile.sh_enable = tpm.volatile.eh_enable = True
    clear_owner_indices(tpm)
    clear_hierarchy_objects(tpm, (RH.OWNER,))
    state.reset_count = 0
    state.restart_count = 0
    state.failed_tries = 0
    state.audit_counter = 0  # (the command audit digest itself goes on)
    tpm.mark_dirty()
    return Response()


@command(
    CC.ClearControl,
    handles=[handle_spec("auth", Auth.USER, permanent=(RH.LOCKOUT, RH.PLATFORM))],
    params=[("disable", TPMI_YES_NO)],
)
def clear_control(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_ClearControl (Part 3 24.7): disable or (platform only) enable TPM2_Clear."""
    disable = bool(cmd.params.disable)
    if cmd.handles[0] == RH.LOCKOUT and not disable:
        raise TpmError(RC.AUTH_FAIL, handle=1)
    tpm.state.disable_clear = disable
    tpm.mark_dirty()
    return Response()


@command(
    CC.HierarchyChangeAuth,
    handles=[handle_spec("authHandle", Auth.USER, permanent=HIERARCHY_AUTH)],
    params=[("newAuth", TPM2B_AUTH)],
)
def hierarchy_change_auth(tpm: Tpm, cmd: Command) -> Response:
    """TPM2_HierarchyChangeAuth (Part 3 24.8): set the authValue of a hierarchy (lockout, owner, endorsement, platform).
    """
    handle = cmd.handles[0]
    set_auth(tpm, handle, cmd.params.newAuth.rstrip(b"\x00"))
    if handle != RH.PLATFORM:  # platformAuth is volatile
        tpm.mark_dirty()
    return Response()
