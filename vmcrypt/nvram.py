"""The ``.nvram`` file: a VM's non-volatile firmware state in tagged sections.

Sections: ``EFIV`` holds the UEFI variable store; ``VTPM`` holds the vTPM's
serialized state (added when a vTPM is attached). Unknown sections are kept
as they are, so an older build does not drop a newer build's data. For an
encrypted VM the whole file is wrapped in a vmcrypt container.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

import construct as cs

from vmcrypt.errors import VmError

MAGIC = b"VMNVRAM\x00"
FORMAT_VERSION = 1
SECTION_EFI = b"EFIV"
SECTION_VTPM = b"VTPM"
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")

# UEFI variable attributes (UEFI spec 2.10, 8.2)
NON_VOLATILE = 0x1
BOOTSERVICE_ACCESS = 0x2
RUNTIME_ACCESS = 0x4
NV_BS_RT = NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS

_SECTION = cs.Struct("tag" / cs.Bytes(4), "data" / cs.Prefixed(cs.Int32ub, cs.GreedyBytes))
_FILE = cs.Struct(
    "magic" / cs.Const(MAGIC),
    "version" / cs.Const(FORMAT_VERSION, cs.Int16ub),
    "sections" / cs.PrefixedArray(cs.Int16ub, _SECTION),
    cs.Terminated,
)
_VARIABLE = cs.Struct(
    "vendor" / cs.Bytes(16),
    "attributes" / cs.Int32ub,
    "name" / cs.PascalString(cs.Int16ub, "utf_16_le"),
    "data" / cs.Prefixed(cs.Int32ub, cs.GreedyBytes),
)
_EFI_STORE = cs.Struct("variables" / cs.PrefixedArray(cs.Int32ub, _VARIABLE), cs.Terminated)


@dataclass(frozen=True)
class EfiVariable:
    """One UEFI variable of the EFIV section: vendor GUID, name, attributes and data."""
    vendor: uuid.UUID
    name: str
    attributes: int
    data: bytes


@dataclass
class Nvram:
    """Parsed sections of a ``.nvram`` file, in file order."""

    sections: dict[bytes, bytes] = field(default_factory=dict)

    @classmethod
    def parse(cls, raw: bytes, name: str = "<nvram>") -> "Nvram":
        """The sections of ``.nvram`` bytes; VmError naming ``name`` when they are not a valid file."""
        try:
            parsed = _FILE.parse(raw)
        except cs.ConstructError as exc:
            raise VmError(f"not a valid .nvram file ({type(exc).__name__})", name) from None
        return cls({s.tag: s.data for s in parsed.sections})

    def build(self) -> bytes:
        """The ``.nvram`` file bytes, sections in order."""
        return _FILE.build({"sections": [{"tag": t, "data": d} for t, d in self.sections.items()]})

    @property
    def efi_variables(self) -> list[EfiVariable]:
        """The UEFI variables of the EFIV section; VmError if that section is damaged."""
        raw = self.sections.get(SECTION_EFI, _EFI_STORE.build({"variables": []}))
        try:
            variables = _EFI_STORE.parse(raw).variables
        except (cs.ConstructError, UnicodeDecodeError) as exc:
            raise VmError(f"the EFI variable store of the .nvram is damaged ({type(exc).__name__})") from None
        return [EfiVariable(uuid.UUID(bytes_le=v.vendor), v.name, v.attributes, v.data) for v in variables]

    @efi_variables.setter
    def efi_variables(self, variables: list[EfiVariable]) -> None:
        self.sections[SECTION_EFI] = _EFI_STORE.build(
            {
                "variables": [
                    {"vendor": v.vendor.bytes_le, "attributes": v.attributes, "name": v.name, "data": v.data}
                    for v in variables
                ]
            }
        )

    @property
    def vtpm_state(self) -> bytes | None:
        """The vTPM's serialized state (the VTPM section), or None when no vTPM is attached."""
        return self.sections.get(SECTION_VTPM)

    @vtpm_state.setter
    def vtpm_state(self, state: bytes | None) -> None:
        if state is None:
            self.sections.pop(SECTION_VTPM, None)
        else:
            self.sections[SECTION_VTPM] = state


def default_nvram(secure_boot: bool = False) -> Nvram:
    """The variable store a fresh EFI VM starts with."""
    nvram = Nvram()
    nvram.efi_variables = [
        EfiVariable(EFI_GLOBAL_VARIABLE, "PlatformLang", NV_BS_RT, b"en-US\x00"),
        EfiVariable(EFI_GLOBAL_VARIABLE, "Lang", NV_BS_RT, b"eng"),
        EfiVariable(EFI_GLOBAL_VARIABLE, "Timeout", NV_BS_RT, (0).to_bytes(2, "little")),
        EfiVariable(EFI_GLOBAL_VARIABLE, "BootOrder", NV_BS_RT, (0).to_bytes(2, "little")),
        EfiVariable(
            EFI_GLOBAL_VARIABLE,
            "Boot0000",
            NV_BS_RT,
            (1).to_bytes(4, "little") + (0).to_bytes(2, "little") + "EFI Virtual disk (0.0)\x00".encode("utf-16-le"),
        ),
        EfiVariable(EFI_GLOBAL_VARIABLE, "SecureBootEnable", NV_BS_RT, bytes([int(secure_boot)])),
    ]
    return nvram
