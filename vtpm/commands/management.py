"""Miscellaneous Management Functions (Part 3, section 26): PP_Commands and SetAlgorithmSet.

PP_Commands changes which commands need physical presence when platformAuth authorizes them;
it needs physical presence itself. A vTPM has no physical presence signal, so it answers
TPM_RC_PP like swtpm (the check is in vtpm.authorization). SetAlgorithmSet records the
vendor-specific algorithm set (TPM_PT_ALGORITHM_SET); this TPM has only one set of algorithms.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.constants import CC, RH
from vtpm.core import COMMANDS, Auth, Command, Response, command, handle_spec
from vtpm.marshal.primitives import U32
from vtpm.marshal.structures import counted

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_CAP_CC = 254
TPML_CC = counted(U32, MAX_CAP_CC)
PLATFORM = handle_spec("auth", Auth.USER, permanent=[RH.PLATFORM])
# Commands whose platform authorization may be made to need physical presence (the reference
# implementation's PP_COMMAND attribute); PP_Commands always needs it.
PP_CAPABLE = frozenset({
    CC.NV_UndefineSpaceSpecial, CC.EvictControl, CC.HierarchyControl, CC.NV_UndefineSpace, CC.ChangeEPS,
    CC.ChangePPS, CC.Clear, CC.ClearControl, CC.ClockSet, CC.HierarchyChangeAuth, CC.NV_DefineSpace,
    CC.PCR_Allocate, CC.PCR_SetAuthPolicy, CC.SetPrimaryPolicy, CC.FieldUpgradeStart, CC.ClockRateAdjust,
    CC.NV_GlobalWriteLock, CC.SetCommandCodeAuditStatus,
})
ALWAYS_PP = CC.PP_Commands


@command(CC.PP_Commands, handles=[PLATFORM], params=[("setList", TPML_CC), ("clearList", TPML_CC)])
def pp_commands(tpm: Tpm, cmd: Command) -> Response:
    """Add and remove commands that need physical presence with platformAuth (Part 3 26.2)."""
    required = set(tpm.state.pp_commands)
    for code in cmd.params.setList:
        if code in COMMANDS and code in PP_CAPABLE:
            required.add(code)
    for code in cmd.params.clearList:
        if code in COMMANDS and code != ALWAYS_PP:
            required.discard(code)
    tpm.state.pp_commands = sorted(required)
    tpm.mark_dirty()
    return Response()


@command(CC.SetAlgorithmSet, handles=[PLATFORM], params=[("algorithmSet", U32)])
def set_algorithm_set(tpm: Tpm, cmd: Command) -> Response:
    """Select the vendor-dependent algorithm set (Part 3 26.3); it takes effect at the next TPM2_Clear."""
    tpm.state.algorithm_set = cmd.params.algorithmSet
    tpm.mark_dirty()
    return Response()
