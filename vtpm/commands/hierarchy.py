"""Hierarchies: permanent handles, their auth values and policies, Clear (Part 3, section 24)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import secrets

from vtpm.constants import CC, HT, RC, RH, ALG
from vtpm.core import Auth, Command, Entity, Response, command, entity_resolver, handle_spec
from vtpm.errors import TpmError
from vtpm.marshal.primitives import U8, U32, OneOf
from vtpm.marshal.structures import TPM2B_AUTH, TPM2B_DIGEST, TPMI_ALG_HASH_NULL
from vtpm.crypto import HASHES
from vtpm.state import Hierarchy, SEED_SIZE, PROOF_SIZE

if TYPE_CHECKING:
    from vtpm.engine import Tpm

HIERARCHY_AUTH = (RH.LOCKOUT, RH.ENDORSEMENT, RH.OWNER, RH.PLATFORM)


def hierarchy_enabled(tpm: Tpm, handle: int) -> bool:
    volatile = tpm.volatile
    return {
        RH.OWNER: volatile.sh_enable,
        RH.ENDORSEMENT: volatile.eh_enable,
        RH.PLATFORM: volatile.ph_enable,
    }.get(handle, True)


def stored_hierarchy(tpm: Tpm, handle: int) -> Hierarchy:
    return {
        RH.OWNER: tpm.state.owner,
        RH.ENDORSEMENT: tpm.state.endorsement,
        RH.LOCKOUT: tpm.state.lockout,
        RH.PLATFORM: tpm.state.platform_policy,
    }[handle]


@entity_resolver(HT.PERMANENT)
def permanent_entity(tpm: Tpm, handle: int) -> Entity:
    if not hierarchy_enabled(tpm, handle):
        raise TpmError(RC.HIERARCHY)
    if handle == RH.PLATFORM:
        h = tpm.state.platform_policy
        return Entity(tpm.volatile.platform_auth, da_protected=False, auth_policy=h.policy, auth_policy_alg=h.policy_alg)
    if handle in (RH.OWNER, RH.ENDORSEMENT):
        h = stored_hierarchy(tpm, handle)
        return Entity(h.auth, da_protected=False, auth_policy=h.policy, auth_policy_alg=h.policy_alg)
    if handle == RH.LOCKOUT:
        h = tpm.state.lockout
        return Entity(h.auth, da_protected=True, is_lockout=True, auth_policy=h.policy, auth_policy_alg=h.policy_alg)
    return Entity(b"", da_protected=False)


@command(
    CC.HierarchyChangeAuth,
    handles=[handle_spec("authHandle", Auth.USER, permanent=HIERARCHY_AUTH)],
    params=[("newAuth", TPM2B_AUTH)],
)
def hierarchy_change_auth(tpm: Tpm, cmd: Command) -> Response:
    new_auth = cmd.params.newAuth.rstrip(b"\x00")
    handle = cmd.handles[0]
    if handle == RH.PLATFORM:
        tpm.volatile.platform_auth = new_auth
    else:
        stored_hierarchy(tpm, handle).auth = new_auth
        tpm.mark_dirty()
    return Response()


@command(
    CC.SetPrimaryPolicy,
    handles=[handle_spec("authHandle", Auth.USER, permanent=HIERARCHY_AUTH)],
    params=[("authPolicy", TPM2B_DIGEST), ("hashAlg", TPMI_ALG_HASH_NULL)],
)
def set_primary_policy(tpm: Tpm, cmd: Command) -> Response:
    policy, alg = cmd.params.authPolicy, cmd.params.hashAlg
    expected = 0 if alg == ALG.NULL else HASHES[alg].size
    if len(policy) != expected:
        raise TpmError(RC.SIZE, param=1)
    target = stored_hierarchy(tpm, cmd.handles[0])
    target.policy, target.policy_alg = policy, alg
    tpm.mark_dirty()
    return Response()


TPMI_YES_NO = OneOf(U8, [0, 1], RC.VALUE)
ENABLE_TARGETS = (RH.ENDORSEMENT, RH.OWNER, RH.PLATFORM, RH.PLATFORM_NV)


@command(
    CC.HierarchyControl,
    handles=[handle_spec("authHandle", Auth.USER, permanent=(RH.PLATFORM, RH.OWNER, RH.ENDORSEMENT))],
    params=[("enable", OneOf(U32, ENABLE_TARGETS, RC.VALUE)), ("state", TPMI_YES_NO)],
)
def hierarchy_control(tpm: Tpm, cmd: Command) -> Response:
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
    setattr(volatile, {RH.ENDORSEMENT: "eh_enable", RH.OWNER: "sh_enable", RH.PLATFORM: "ph_enable",
                       RH.PLATFORM_NV: "ph_enable_nv"}[target], enable)
    return Response()


@command(CC.Clear, handles=[handle_spec("authHandle", Auth.USER, permanent=(RH.LOCKOUT, RH.PLATFORM))])
def clear(tpm: Tpm, cmd: Command) -> Response:
    state = tpm.state
    if state.disable_clear:
        raise TpmError(RC.DISABLED)
    state.sps = secrets.token_bytes(SEED_SIZE)
    state.sh_proof = secrets.token_bytes(PROOF_SIZE)
    state.eh_proof = secrets.token_bytes(PROOF_SIZE)
    state.owner = Hierarchy()
    state.endorsement = Hierarchy()
    state.lockout = Hierarchy()
    tpm.volatile.sh_enable = tpm.volatile.eh_enable = True
    from vtpm.commands.nv import clear_owner_indices
    from vtpm.commands.objects import clear_hierarchy_objects

    clear_owner_indices(tpm)
    clear_hierarchy_objects(tpm, (RH.OWNER,))
    state.reset_count = 0
    state.restart_count = 0
    state.failed_tries = 0
    tpm.mark_dirty()
    return Response()


@command(
    CC.ClearControl,
    handles=[handle_spec("auth", Auth.USER, permanent=(RH.LOCKOUT, RH.PLATFORM))],
    params=[("disable", TPMI_YES_NO)],
)
def clear_control(tpm: Tpm, cmd: Command) -> Response:
    disable = bool(cmd.params.disable)
    if cmd.handles[0] == RH.LOCKOUT and not disable:
        raise TpmError(RC.AUTH_FAIL, handle=1)
    tpm.state.disable_clear = disable
    tpm.mark_dirty()
    return Response()


@command(CC.ChangeEPS, handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])])
def change_eps(tpm: Tpm, cmd: Command) -> Response:
    """A new endorsement seed: every endorsement key (the EK included) changes."""
    from vtpm.commands.objects import clear_hierarchy_objects

    tpm.state.eps = secrets.token_bytes(SEED_SIZE)
    tpm.state.eh_proof = secrets.token_bytes(PROOF_SIZE)
    tpm.state.endorsement = Hierarchy()
    clear_hierarchy_objects(tpm, (RH.ENDORSEMENT,))
    return Response()


@command(CC.ChangePPS, handles=[handle_spec("authHandle", Auth.USER, permanent=[RH.PLATFORM])])
def change_pps(tpm: Tpm, cmd: Command) -> Response:
    from vtpm.commands.objects import clear_hierarchy_objects

    tpm.state.pps = secrets.token_bytes(SEED_SIZE)
    tpm.state.ph_proof = secrets.token_bytes(PROOF_SIZE)
    tpm.state.platform_policy = Hierarchy()
    clear_hierarchy_objects(tpm, (RH.PLATFORM,))
    return Response()
