"""PCRs: banks, attributes and groups of the PC Client profile, extending, digests of a
selection, and the PCR entity resolver. The PCR commands are in vtpm.commands.pcr."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from vtpm.constants import HT, RC
from vtpm.core import Entity, entity_resolver
from vtpm.crypto import HASHES
from vtpm.errors import TpmError
from vtpm.marshal.structures import PCR_SELECT_MAX
from vtpm.state import PCR_COUNT

if TYPE_CHECKING:
    from vtpm.engine import Tpm


@dataclass(frozen=True)
class PcrAttributes:
    """Which PCR attributes a PCR has: saved across Shutdown(STATE), and the localities that may reset or extend it."""
    save: bool
    reset_localities: int  # bit n: locality n may reset
    extend_localities: int  # bit n: locality n may extend


# PC Client profile, as libtpms configures it: 0-15 static RTM, 16 debug, 17-22 DRTM, 23 application.
PCR_ATTRIBUTES = (
    [PcrAttributes(True, 0x00, 0x1F)] * 16
    + [PcrAttributes(False, 0x0F, 0x1F)]  # 16
    + [PcrAttributes(False, 0x10, 0x1C)] * 2  # 17, 18
    + [PcrAttributes(False, 0x10, 0x0C)]  # 19
    + [PcrAttributes(False, 0x14, 0x0E)]  # 20
    + [PcrAttributes(False, 0x14, 0x04)] * 2  # 21, 22
    + [PcrAttributes(False, 0x0F, 0x1F)]  # 23
)
assert len(PCR_ATTRIBUTES) == PCR_COUNT


# PCRs 20-22 share one authValue and one authPolicy (PCR_SetAuthValue/PCR_SetAuthPolicy),
# as in the reference implementation's PC Client configuration.
PCR_GROUP = frozenset({20, 21, 22})


@entity_resolver(HT.PCR)
def pcr_entity(tpm: Tpm, handle: int) -> Entity:
    """The entity of a PCR: the group's authValue and authPolicy for the PCRs in a group, no authorization for the
    others; TPM_RC_VALUE for a PCR this TPM does not have."""
    if handle >= PCR_COUNT:
        raise TpmError(RC.VALUE)
    if handle in PCR_GROUP:
        policy = tpm.state.pcr_group_policy
        return Entity(tpm.volatile.pcr_group_auth, da_protected=False,
                      auth_policy=policy.policy, auth_policy_alg=policy.policy_alg)
    return _NO_AUTH


_NO_AUTH = Entity(b"", da_protected=False)  # immutable: one instance for every PCR outside the group
ALL_PCRS = (1 << PCR_COUNT) - 1
HCRTM_PCR, DRTM_PCR = 0, 17  # PCR_Allocate keeps each of them in at least one bank


def allocation(tpm: Tpm) -> dict[int, int]:
    """Every implemented bank and the bitmap of its allocated PCRs (0: not allocated)."""
    partial = {alg: mask for alg, mask in tpm.state.pcr_partial}
    return {bank: (partial.get(bank, ALL_PCRS) if bank in tpm.state.pcr_banks else 0) for bank in sorted(HASHES)}


def bank_mask(tpm: Tpm, bank: int) -> int:
    """allocation(tpm).get(bank, 0) without building the whole table (a partial entry named last wins)."""
    if bank not in HASHES or bank not in tpm.state.pcr_banks:
        return 0
    for alg, mask in reversed(tpm.state.pcr_partial):
        if alg == bank:
            return int(mask)
    return ALL_PCRS


def allocated(tpm: Tpm, bank: int, index: int) -> bool:
    """Whether PCR ``index`` is allocated in ``bank``."""
    return bool(bank_mask(tpm, bank) >> index & 1)


def locality_bit(locality: int) -> int:
    """The bit of ``locality`` in a PCR's locality mask (none for the extended localities 5 and up)."""
    return 1 << locality if locality < 5 else 0


NO_INCREMENT = frozenset({16, 21, 22, 23})


def counts_update(index: int) -> bool:
    """Whether changing this PCR advances pcrUpdateCounter (PCRs 16, 21-23 do not)."""
    return index not in NO_INCREMENT


def extend(tpm: Tpm, index: int, digests: list[tuple[int, bytes]]) -> None:
    """Extend PCR ``index`` with each (bank, digest) in order; unallocated banks are skipped.

    Each bank extended counts once in pcrUpdateCounter, as the reference implementation does.
    """
    plan = extend_plan(tpm, index, [bank for bank, _ in digests])
    extend_planned(tpm, index, plan, [{"hashAlg": bank, "digest": value} for bank, value in digests])


# What an extend does: the objects it was made from, then (bank values, hash constructor, which digest).
ExtendPlan = tuple[object, object, object, list[tuple[list[bytes], Callable[[bytes], Any], int]]]


def extend_plan(tpm: Tpm, index: int, banks: list[int]) -> ExtendPlan:
    """What an extend of PCR ``index`` with digests for ``banks`` (in that order) does under the allocation
    in force: for each allocated bank named, its values, its hash constructor and the position of its
    digest. It names banks, not digests, so it holds for any digests of those banks. The plan holds the
    objects it was made from (the PCR banks, the allocation): a kept plan is current while they are the
    objects in force (each is replaced, never changed in place)."""
    pcrs, state = tpm.volatile.pcrs, tpm.state
    steps = []
    for position, bank in enumerate(banks):
        values = pcrs.get(bank)
        if values is not None and bank_mask(tpm, bank) >> index & 1:
            steps.append((values, _HASH_NEW[bank], position))
    return pcrs, state.pcr_banks, state.pcr_partial, steps


def extend_planned(tpm: Tpm, index: int, plan: ExtendPlan, digests: Sequence[Mapping[str, Any]]) -> None:
    """``extend`` with its plan made (``extend_plan``): the locality check, then each step with its digest
    (``digests``: TPMT_HA entries as the parameters hold them, in the order the plan was made for)."""
    if not PCR_ATTRIBUTES[index].extend_localities & locality_bit(tpm.locality):
        raise TpmError(RC.LOCALITY)
    steps = plan[3]
    for values, new, position in steps:
        values[index] = new(values[index] + digests[position]["digest"]).digest()
    if steps and counts_update(index):  # once per bank extended
        tpm.volatile.pcr_update_counter += len(steps)


# hashlib's named constructors by bank: a PCR_Extend hashes old value || digest once per bank.
_HASH_NEW = {alg: getattr(hashlib, info.name) for alg, info in HASHES.items()}


def pcr_digest(tpm: Tpm, alg: int, selection: Any) -> bytes:
    """Digest of the selected PCR values, bank by bank, PCR by PCR (Part 3 18.4, 12.1)."""
    h = HASHES[alg]
    state = hashlib.new(h.name)
    masks = allocation(tpm)
    for entry in selection:
        bank = tpm.volatile.pcrs.get(entry.hash)
        if bank is None:
            continue
        bits = entry.pcrSelect
        for index in range(min(len(bits) * 8, 24)):
            if bits[index // 8] >> (index % 8) & 1 and masks.get(entry.hash, 0) >> index & 1:
                state.update(bank[index])
    return state.digest()


def pcr_selection_all(tpm: Tpm) -> list[dict[str, object]]:
    """Every implemented bank with the PCRs allocated in it (GetCapability PCRS)."""
    return [{"hash": bank, "pcrSelect": mask.to_bytes(PCR_SELECT_MAX, "little")}
            for bank, mask in allocation(tpm).items()]
