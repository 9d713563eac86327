"""Backup and restore of a VM: one tar archive with a manifest, files as they are on disk.

Encrypted files go into the archive still encrypted, so a backup holds no
plaintext and no key material; the manifest names the key provider and key id so
a restore can check, before it writes anything, that the key is still there.
A VM with a vTPM is only restorable with its .nvram: without it the TPM's seeds,
EKs and NV data would be gone, so such an archive is refused. A restored VM is
checked against its encryption record (every listed file there and bound to the
VM) before it is switched into place, and its .nvram is written back as a new
generation above the one its key provider recorded: restoring an older state is
an administrator's deliberate act, so that state becomes the latest, and copies
of what was there before count as rolled back.
"""

from __future__ import annotations

import datetime
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from durable.atomic import atomic_writer, fsync_directory
from vmcrypt import container
from vmcrypt.errors import VmcryptError
from vmcrypt.keyref import KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vm_encryption import NVRAM_ROLE, check_vm_files, read_vmx
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_vtpm import fold_leftover_journal

FORMAT = 1
MANIFEST = "manifest.json"
CHUNK = 1 << 20
MAX_MANIFEST = 16 << 20  # a manifest lists a VM's files: far below this; a larger one is not read into memory
ProgressFn = Callable[[VmFile, int, int], None]


class BackupError(VmcryptError):
    """The archive cannot be made, is incomplete or damaged, or cannot be restored here."""


@dataclass(frozen=True)
class BackupEntry:
    """One archived file: its name in the archive, size and SHA-256 (checked by ``verify_backup``)."""

    name: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """What a backup archive holds: the VM, when, how it is encrypted (provider and key id), and each file's
    size and SHA-256 (``verify_backup`` checks them without any key)."""

    vm: str
    created: str
    encrypted: bool
    provider_id: str | None
    key_id: str | None
    vtpm: bool
    disks_included: bool
    files: tuple[BackupEntry, ...]

    def to_json(self) -> bytes:
        """The manifest as stored in the archive (with its format number)."""
        body = {**self.__dict__, "format": FORMAT, "files": [e.__dict__ for e in self.files]}
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, raw: bytes, archive: Path) -> "Manifest":
        """Parse a stored manifest; anything malformed raises BackupError naming ``archive``."""
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError(f"a JSON object was expected, not {type(body).__name__}")
            if body.get("format") != FORMAT:
                raise ValueError(f"unknown format {body.get('format')!r}")
            expected = {"vm": str, "created": str, "encrypted": bool, "provider_id": (str, type(None)),
                        "key_id": (str, type(None)), "vtpm": bool, "disks_included": bool, "files": list}
            unknown = sorted(set(body) - set(expected) - {"format"})
            if unknown:
                raise ValueError(f"unexpected keys {', '.join(unknown)}")
            for key, kind in expected.items():
                if key not in body:
                    raise ValueError(f"'{key}' is missing")
                if not isinstance(body[key], kind):
                    raise ValueError(f"'{key}' has the wrong type ({type(body[key]).__name__})")
            if not _plain_name(body["vm"]):
                raise ValueError(f"'vm' is not a VM name: {body['vm']!r}")
            files = []
            for entry in body["files"]:
                if not (isinstance(entry, dict) and set(entry) == {"name", "size", "sha256"}
                        and isinstance(entry["name"], str) and _plain_name(entry["name"])
                        and isinstance(entry["size"], int) and not isinstance(entry["size"], bool) and entry["size"] >= 0
                        and isinstance(entry["sha256"], str) and len(entry["sha256"]) == 64):
                    raise ValueError(f"unexpected file entry {entry!r}"[:200])
                files.append(BackupEntry(entry["name"], entry["size"], entry["sha256"]))
            body.pop("format")
            body.pop("files")
            return cls(**body, files=tuple(files))
        except (ValueError, RecursionError) as exc:
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise BackupError(f"the manifest is not readable ({reason})", archive) from None


def _plain_name(name: str) -> bool:
    """A file or VM name: no directory part, not hidden, not empty."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".") and name not in (".", "..")


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def backup_vm(vm: VmHome, keys: KeyManager, destination: str | os.PathLike[str], *, include_disks: bool = True,
              progress: ProgressFn | None = None) -> Manifest:
    """Write ``destination`` atomically: every VM file (disks unless excluded) and a manifest."""
    with lock_vm(vm, "back up"):
        fold_leftover_journal(vm, keys)
        return _backup(vm, keys, destination, include_disks, progress)


def _backup(vm: VmHome, keys: KeyManager, destination: str | os.PathLike[str], include_disks: bool,
            progress: ProgressFn | None) -> Manifest:
    state = read_vmx(vm, keys)
    has_vtpm = (state.settings.get("vtpm.present") or "").upper() == "TRUE"
    files = {vm.vmx_path: VmFile(vm.vmx_path, FileKind.CONFIG)}
    files.update({f.path: f for f in vm.home_files()})
    files.update({p: VmFile(p, FileKind.CONFIG) for p in vm.descriptors()})
    if include_disks:
        files.update({f.path: f for f in vm.disk_files()})
    if has_vtpm and vm.nvram_path not in files:
        raise BackupError("the VM has a vTPM but no .nvram: there is nothing to back its TPM up from", vm.vmx_path)
    entries = []
    for path in files:
        size, digest = _hash_file(path)
        entries.append(BackupEntry(path.name, size, digest))
    ref = state.reference
    manifest = Manifest(vm.name, datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                        ref is not None, ref.provider_id if ref else None, ref.key_id if ref else None,
                        has_vtpm, include_disks, tuple(entries))
    with atomic_writer(destination) as out:
        with tarfile.open(fileobj=out, mode="w") as tar:
            raw = manifest.to_json()
            info = tarfile.TarInfo(MANIFEST)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
            for entry in entries:
                path = vm.directory / entry.name
                info = tarfile.TarInfo(f"vm/{entry.name}")
                info.size, info.mode = entry.size, 0o600
                with open(path, "rb") as handle:
                    tar.addfile(info, _Counting(handle, files[path], entry.size, progress))
    return manifest


class _Counting(io.RawIOBase):
    """A file reader that reports progress as tarfile copies it."""

    def __init__(self, handle, vm_file: VmFile, total: int, progress: ProgressFn | None) -> None:
        self.handle, self.vm_file, self.total, self.progress, self.done = handle, vm_file, total, progress, 0

    def read(self, size: int = -1) -> bytes:
        data = self.handle.read(size)
        self.done += len(data)
        if self.progress:
            self.progress(self.vm_file, self.done, self.total)
        return data


def verify_backup(archive: str | os.PathLike[str]) -> Manifest:
    """Every file the manifest names is there with its size and SHA-256; nothing else is."""
    archive = Path(archive)
    try:
        with tarfile.open(archive, mode="r") as tar:
            member = tar.getmember(MANIFEST) if MANIFEST in tar.getnames() else None
            if member is None:
                raise BackupError("the archive has no manifest", archive)
            if not member.isfile():
                raise BackupError("the manifest is not a regular file in the archive", archive)
            if member.size > MAX_MANIFEST:
                raise BackupError(f"the manifest claims {member.size} bytes, more than a manifest holds", archive)
            manifest = Manifest.from_json(tar.extractfile(member).read(), archive)
            present = {m.name: m for m in tar.getmembers() if m.name != MANIFEST}
            expected = {f"vm/{e.name}": e for e in manifest.files}
            missing = sorted(set(expected) - set(present))
            if missing:
                raise BackupError(f"the archive is incomplete: {', '.join(n[3:] for n in missing)} missing", archive)
            extra = sorted(set(present) - set(expected))
            if extra:
                raise BackupError(f"the archive holds files its manifest does not name: {', '.join(extra)}", archive)
            for name, entry in expected.items():
                member = present[name]
                # sparse members are never written here, and their holes could claim any size without taking room
                if not member.isfile() or member.issparse() or "/" in entry.name or entry.name.startswith("."):
                    raise BackupError(f"unexpected archive member {name}", archive)
                if member.size != entry.size:  # before reading: a size that lies is not read through
                    raise BackupError(f"{entry.name} in the archive does not match its manifest entry", archive)
                digest = hashlib.sha256()
                handle = tar.extractfile(member)
                while chunk := handle.read(CHUNK):
                    digest.update(chunk)
                if digest.hexdigest() != entry.sha256:
                    raise BackupError(f"{entry.name} in the archive does not match its manifest entry", archive)
    except (tarfile.TarError, EOFError, OSError, ValueError, OverflowError) as exc:  # tarfile's, for bad PAX numbers
        if isinstance(exc, VmcryptError):
            raise
        if isinstance(exc, tarfile.ReadError):  # tarfile lists every compression it tried, one per line
            raise BackupError("not a backup archive (not a readable tar file)", archive) from None
        raise BackupError(f"the archive cannot be read ({exc})", archive) from None
    return manifest


def check_restorable(archive: str | os.PathLike[str], keys: KeyManager) -> Manifest:
    """Everything a restore needs, checked before anything is written."""
    manifest = verify_backup(archive)
    names = {e.name for e in manifest.files}
    if f"{manifest.vm}.vmx" not in names:
        raise BackupError("the archive has no .vmx", archive)
    if manifest.vtpm and f"{manifest.vm}.nvram" not in names:
        raise BackupError("the VM has a vTPM but the archive has no .nvram: its TPM cannot be restored", archive)
    if manifest.encrypted:
        with tarfile.open(archive, mode="r") as tar:
            vmx = tar.extractfile(f"vm/{manifest.vm}.vmx").read().decode(errors="replace")
        keysafe = next((line.split("=", 1)[1].strip().strip('"') for line in vmx.splitlines()
                        if line.split("=", 1)[0].strip() == "encryption.keySafe"), None)
        if keysafe is None:
            raise BackupError("the manifest says encrypted but the .vmx has no key safe", archive)
        try:
            keys.unlock(KeyReference.from_keysafe(keysafe))
        except VmcryptError as exc:
            raise BackupError(f"the VM's key is not available from its key provider: {exc.reason}", archive) from None
    return manifest


def restore_vm(archive: str | os.PathLike[str], directory: str | os.PathLike[str], keys: KeyManager) -> VmHome:
    """Check, then extract into ``directory`` (absent or empty); a failed restore leaves nothing behind."""
    manifest = check_restorable(archive, keys)
    target = Path(directory)
    if target.exists() and any(target.iterdir()):
        raise BackupError(f"{target} exists and is not empty", archive)
    staging = target.with_name(f".{target.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)  # left by an interrupted restore
    staging.mkdir(mode=0o700, parents=True)
    try:
        with tarfile.open(archive, mode="r") as tar:
            for entry in manifest.files:
                source = tar.extractfile(f"vm/{entry.name}")
                with atomic_writer(staging / entry.name) as out:
                    while chunk := source.read(CHUNK):
                        out.write(chunk)
        staged = VmHome(staging / f"{manifest.vm}.vmx")
        with lock_vm(staged, "restore"):
            # the restored VM as its encryption record describes it (disks only if they were backed up)
            state = check_vm_files(staged, keys, skip=() if manifest.disks_included else (FileKind.DISK,))
            if state.reference is not None and container.is_container(staged.nvram_path):
                _renew_nvram(staged, keys, state.reference, state.record.vm_id if state.record else "")
        if target.exists():
            target.rmdir()
        staging.rename(target)
        fsync_directory(target.parent)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)  # temp files included: nothing half-restored stays
        raise
    return VmHome(target / f"{manifest.vm}.vmx")


def _renew_nvram(vm: VmHome, keys: KeyManager, reference: KeyReference, vm_id: str) -> None:
    """Verify the restored .nvram and write it back as a generation above the latest its key provider
    recorded, which becomes the new record: the restored state is the latest, not a rollback."""
    key = keys.unlock(reference)
    header = container.read_header(vm.nvram_path)
    data = container.read_file(vm.nvram_path, key)
    provider = keys.provider(reference.provider_id)
    recorded = provider.generation(reference.key_id, NVRAM_ROLE) or 0
    written = container.write_file(vm.nvram_path, data, key, label=VmFile(vm.nvram_path, FileKind.NVRAM).label,
                                   vm_id=vm_id or header.vm_id, min_generation=max(recorded, header.generation) + 1)
    provider.record_generation(reference.key_id, NVRAM_ROLE, written.generation)
