"""An encrypted VM's own record of itself, and the checks that hold its files to it.

``encryption.data`` in the ``.vmx`` (encrypted and authenticated under the VM's
DEK) carries, next to the sensitive settings, the VM's id and the list of files
encryption covers (path relative to the VM directory, and kind). Every encrypted
file's container header names its role (the label, ``kind:name``) and the VM id,
covered by its MAC. Together they let a reader refuse, naming the file:

- a listed file that is missing, empty, or no longer a container (a flipped
  magic byte must not pass for "already clear");
- a container whose label is another file's (two files swapped, or renamed);
- a container of another VM (another VM id), or under a key that is not this
  VM's (copied in from elsewhere, or an older copy from before a rekey).

The VM id is taken from ``uuid.bios`` when the VM is first encrypted (a random
one when it has none) and from the authenticated record afterwards, never from
the clear part of the ``.vmx``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from vmcrypt import container
from vmcrypt.container import ContainerHeader
from vmcrypt.errors import VmError
from vmcrypt.keyref import KeyReference
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vmx import VmxConfig


@dataclass(frozen=True)
class EncryptionRecord:
    """The list of a VM's encrypted home files (relative path and kind) under its id: what encrypt, decrypt and rekey
    must cover, and what a swapped or missing file is checked against."""
    vm_id: str
    files: dict[str, str] = field(default_factory=dict)  # relative path -> FileKind value

    def to_json(self) -> dict:
        """The record as it goes into ``encryption.data`` (files sorted by path)."""
        return {"vm_id": self.vm_id, "files": [[path, kind] for path, kind in sorted(self.files.items())]}

    @classmethod
    def from_json(cls, body: dict, name: str | Path) -> "EncryptionRecord | None":
        """The record in a decrypted ``encryption.data`` body; None for one written before records existed."""
        if "vm_id" not in body:
            return None
        vm_id, files = body.get("vm_id"), body.get("files")
        kinds = {k.value for k in FileKind}
        if not (isinstance(vm_id, str) and vm_id and isinstance(files, list) and all(
                isinstance(entry, list) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
                and entry[1] in kinds and _safe_relative(entry[0]) for entry in files)):
            raise VmError("the encryption record in encryption.data is malformed", name)
        return cls(vm_id, {path: kind for path, kind in files})


def _safe_relative(path: str) -> bool:
    parts = PurePosixPath(path).parts
    return bool(parts) and not PurePosixPath(path).is_absolute() and ".." not in parts


def relative_name(home: VmHome, path: Path) -> str:
    """``path`` relative to the VM's home directory, with forward slashes (the record's key)."""
    return path.relative_to(home.directory).as_posix()


def vm_id_from_settings(settings: VmxConfig) -> str:
    """The VM's id for a first encryption: its ``uuid.bios`` normalised, else a new random one."""
    raw = settings.get("uuid.bios") or ""
    try:
        return str(uuid.UUID(hex=re.sub(r"[\s-]", "", raw)))
    except ValueError:
        return str(uuid.uuid4())


def record_for(home: VmHome, vm_id: str, files: list[VmFile]) -> EncryptionRecord:
    """The encryption record of ``files`` for the VM with id ``vm_id``."""
    return EncryptionRecord(vm_id, {relative_name(home, f.path): f.kind.value for f in files})


def listed_files(home: VmHome, record: EncryptionRecord) -> list[VmFile]:
    """The files an encryption record lists, as VmFiles of ``home``, sorted by path."""
    return [VmFile(home.directory / Path(*PurePosixPath(path).parts), FileKind(kind))
            for path, kind in sorted(record.files.items())]


def check_binding(vm_file: VmFile, header: ContainerHeader, vm_id: str | None,
                  allowed: Collection[KeyReference]) -> None:
    """The container at ``vm_file`` must be this file (its role), of this VM, under one of ``allowed``."""
    path = vm_file.path
    if header.label != vm_file.label:
        raise VmError(f"holds the file '{header.label}', not '{vm_file.label}': "
                      "it was swapped with or renamed from another file", path)
    if vm_id and header.vm_id and header.vm_id != vm_id:
        raise VmError(f"belongs to another VM (VM id {header.vm_id}; this VM is {vm_id}): it was copied in", path)
    if header.reference not in allowed:
        raise VmError(f"is encrypted under key {header.reference.key_id} of provider {header.reference.provider_id}, "
                      "which is not this VM's key: it was copied from another VM or is an older copy", path)


def check_listed(home: VmHome, record: EncryptionRecord, allowed: Collection[KeyReference], *,
                 plain_ok: bool = False, skip: Collection[FileKind] = ()) -> None:
    """Every file the record lists is there, a container, and bound to this VM and role.

    ``plain_ok``: a listed file may be clear (an authenticated decrypt was interrupted half-way).
    """
    for vm_file in listed_files(home, record):
        if vm_file.kind in skip:
            continue
        path = vm_file.path
        if not path.is_file():
            raise VmError("is missing, but the VM's encryption record lists it: it was deleted or moved away", path)
        if not container.is_container(path):
            if plain_ok:
                continue
            what = "is empty (0 bytes)" if path.stat().st_size == 0 else "is not an encrypted vmcrypt file"
            raise VmError(f"{what}, but the VM's encryption record lists it as encrypted: "
                          "it was damaged, truncated or replaced", path)
        check_binding(vm_file, container.read_header(path), record.vm_id, allowed)
