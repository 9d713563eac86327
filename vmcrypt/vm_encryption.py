"""Encrypt, decrypt and rekey a whole VM, surviving a crash at any point.

Every operation is one idea: *converge* each file of the VM towards a target
key (or towards plaintext). A file is either plain or a self-describing
container whose header names its key, so the state of each file can be read
off the file itself. A small journal in the VM directory records the target
(a key safe, no secret) before the first file changes; if the process dies,
running the same command again resumes towards that target, and running
``decrypt`` instead rolls every file back to plaintext. The ``.vmx`` is
written last, so it only claims encryption once every file is encrypted.

Before any file changes, every file is checked against the VM (see
``vm_record``): the files its encryption record lists must be there and be
containers, and every container must be bound to this VM, to its own role and
to a key of this VM (its key safe, or the target of an interrupted operation).
The journal of an encrypted VM is authenticated under the VM's DEK; only an
authentic interrupted ``decrypt`` lets a listed file be clear already.
Operations hold the VM's lock (``vm_lock``): none runs while the vTPM does.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import hmac
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from durable.atomic import fsync_directory, write_atomic
from vmcrypt import container, disk_stream
from vmcrypt.container import Mac
from vmcrypt.errors import ContainerError, InterruptedOperationError, VmcryptError, VmError
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vm_lock import lock_vm
from vmcrypt.vm_record import (
    EncryptionRecord,
    check_binding,
    check_listed,
    record_for,
    relative_name,
    vm_id_from_settings,
)
from vmcrypt.vmx import ENCRYPTED_DATA, KEYSAFE, VmxConfig, is_sensitive
from vmcrypt.xts import CIPHER_NAME

VMX_DATA_LABEL = "vmx-encryption-data"
JOURNAL_FORMAT = 2
JOURNAL_FORMATS = (1, 2)  # 1: no VM id, key list or MAC
NVRAM_ROLE = FileKind.NVRAM.value  # the file whose high-water mark key providers keep

# (file, bytes done, bytes total) -> None; called as files progress
ProgressFn = Callable[[VmFile, int, int], None]


class Operation(str, enum.Enum):
    """What a journaled run does to a VM's files."""

    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SHALLOW_REKEY = "rekey"
    DEEP_REKEY = "deep-rekey"


@dataclass
class Journal:
    """The record of an unfinished operation, so a repeated run resumes it and ``decrypt`` can roll it back."""

    operation: Operation
    target: str | None  # key safe of the target key, None for plaintext
    include_disks: bool
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    vm_id: str | None = None
    references: tuple[str, ...] = ()  # key safes the VM's files may be under until the operation ends
    mac_key: str | None = None  # key safe of the DEK that authenticates this journal (the VM's, when encrypted)
    mac: str | None = None
    # disk file name -> payload bytes of its partial file that are durably final (see vmcrypt.disk_stream)
    disks: dict[str, int] = field(default_factory=dict)

    @property
    def target_reference(self) -> KeyReference | None:
        """The key the files are being moved under (None: to plaintext)."""
        return KeyReference.from_keysafe(self.target) if self.target else None

    def known_references(self) -> set[KeyReference]:
        """Every key a file may be under until the operation ends."""
        found = {KeyReference.from_keysafe(k) for k in self.references}
        return found | ({self.target_reference} if self.target else set())

    def _body(self) -> dict[str, Any]:
        return {
            "format": JOURNAL_FORMAT,
            "operation": self.operation.value,
            "target": self.target,
            "include_disks": self.include_disks,
            "started": self.started,
            "vm_id": self.vm_id,
            "references": list(self.references),
            "mac_key": self.mac_key,
            **({"disks": dict(self.disks)} if self.disks else {}),
        }

    def save(self, home: VmHome, key: DataKey | None = None) -> None:
        """Write the journal; authenticated under ``key`` (the VM's current DEK) when given."""
        if key is not None:
            self.mac_key = key.reference.to_keysafe()
            self.mac = _journal_mac(key, self._body())
        body = {**self._body(), "mac": self.mac}
        write_atomic(home.journal_path, json.dumps(body, indent=2).encode(), mode=0o600)

    def authentic(self, key: DataKey) -> bool:
        """True if the journal was written under ``key`` by vmcrypt (not forged or altered)."""
        if self.mac is None or self.mac_key != key.reference.to_keysafe():
            return False
        return hmac.compare_digest(_journal_mac(key, self._body()), self.mac)

    @classmethod
    def load(cls, home: VmHome) -> "Journal | None":
        """The home's journal, None when no operation is unfinished; a malformed one raises VmError."""
        try:
            raw = home.journal_path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            body = json.loads(raw)
            if not isinstance(body, dict):
                raise ValueError(f"a JSON object was expected, not {type(body).__name__}")
            if body.get("format") not in JOURNAL_FORMATS:
                raise ValueError(f"format {body.get('format')!r}")
            operation = Operation(_typed(body, "operation", str))
            target = _typed(body, "target", (str, type(None)))
            if target is not None:
                KeyReference.from_keysafe(target)
            include_disks = _typed(body, "include_disks", bool)
            started = _typed(body, "started", str)
            extra: dict[str, Any] = {}
            if body["format"] >= 2:
                extra["vm_id"] = _typed(body, "vm_id", (str, type(None)))
                references = _typed(body, "references", list)
                if not all(isinstance(r, str) for r in references):
                    raise ValueError("'references' must list key safes")
                for reference in references:
                    KeyReference.from_keysafe(reference)
                extra["references"] = tuple(references)
                extra["mac_key"] = _typed(body, "mac_key", (str, type(None)))
                extra["mac"] = _typed(body, "mac", (str, type(None)))
                disks = body.get("disks", {})
                if not isinstance(disks, dict) or not all(
                        isinstance(k, str) and type(v) is int and v >= 0 for k, v in disks.items()):
                    raise ValueError("'disks' must map file names to byte counts")
                extra["disks"] = dict(disks)
            return cls(operation, target, include_disks, started, **extra)
        except (ValueError, KeyError, RecursionError, VmcryptError) as exc:
            reason = exc.reason if isinstance(exc, VmcryptError) else (
                "nested too deeply" if isinstance(exc, RecursionError) else str(exc))
            raise VmError(f"the operation journal is unreadable ({reason})", home.journal_path) from None

    @staticmethod
    def remove(home: VmHome) -> None:
        """Delete the journal durably: the operation is finished."""
        with contextlib.suppress(FileNotFoundError):
            home.journal_path.unlink()
        fsync_directory(home.directory)


def _typed(body: dict[str, Any], name: str, kind: type | tuple[type, ...]) -> Any:
    if name not in body:
        raise ValueError(f"'{name}' is missing")
    value = body[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind in (int, (int, type(None)))):
        raise ValueError(f"'{name}' has the wrong type ({type(value).__name__})")
    return value


def _journal_mac(key: DataKey, body: dict[str, Any]) -> str:
    mac_key = hmac.new(key.dek, b"vmcrypt/v2/journal-mac", hashlib.sha256).digest()
    return hmac.new(mac_key, json.dumps(body, sort_keys=True).encode(), hashlib.sha256).hexdigest()


# ----------------------------------------------------------------------------- .vmx


@dataclass
class VmxState:
    """What the ``.vmx`` says about encryption: its settings, key safe and (with a key) the encryption record."""

    settings: VmxConfig
    reference: KeyReference | None
    record: EncryptionRecord | None = None  # read (and authenticated) only when a key was given


def read_vmx(home: VmHome, keys: KeyManager | None, *, key: DataKey | None = None) -> VmxState:
    """All settings of the VM; with ``keys`` (or the VM's ``key``) the sensitive ones are decrypted
    and the ``.vmx`` is checked: a key safe needs its ``encryption.data`` and the reverse, the
    encrypted settings must be under the key safe's key, and no sensitive setting may sit in clear."""
    vmx = home.vmx_path
    try:
        text = vmx.read_text()
    except UnicodeDecodeError as exc:
        raise VmError(f"not a text file ({exc.reason} at byte {exc.start})", vmx) from None
    clear = VmxConfig.parse(text, str(vmx))
    keysafe = clear.get(KEYSAFE)
    try:
        reference = KeyReference.from_keysafe(keysafe) if keysafe else None
    except VmcryptError as exc:
        raise VmError(f"{KEYSAFE}: {exc.reason}", vmx) from None
    blob = clear.get(ENCRYPTED_DATA)
    if keys is None and key is None:
        return VmxState(clear, reference)
    if reference is None:
        if blob is not None:
            raise VmError(f"{ENCRYPTED_DATA} is there but {KEYSAFE} is not: the key safe was removed", vmx)
        return VmxState(clear, None)
    if blob is None:
        raise VmError(f"{KEYSAFE} is there but {ENCRYPTED_DATA} is not: the VM's encrypted settings "
                      "were removed from the .vmx", vmx)
    name = f"{vmx} ({ENCRYPTED_DATA})"
    try:
        raw_blob = base64.b64decode(blob, validate=True)
    except (ValueError, binascii.Error) as exc:
        raise VmError(f"{ENCRYPTED_DATA} is malformed ({exc})", vmx) from None
    header = container.parse_header(raw_blob, name)
    if header.label != VMX_DATA_LABEL or header.reference != reference:
        raise VmError(f"{ENCRYPTED_DATA} does not belong with {KEYSAFE} (another label or key): "
                      "it was taken from another .vmx", vmx)
    if key is None:
        assert keys is not None
        key = keys.unlock(reference)
    elif key.reference != reference:
        raise VmError(f"the key offered is not the one {KEYSAFE} names", vmx)
    body = _parse_data(container.decrypt_bytes(raw_blob, key, name=name), vmx)
    record = EncryptionRecord.from_json(body, vmx)
    if record is not None and header.vm_id != record.vm_id:
        raise VmError(f"{ENCRYPTED_DATA} was written for another VM", vmx)
    for setting in clear:
        if is_sensitive(setting):
            raise VmError(f"setting '{setting}' is in clear in an encrypted VM (it belongs in {ENCRYPTED_DATA}): "
                          "the .vmx was edited outside vmcrypt", vmx)
    merged = VmxConfig.from_items((k, v) for k, v in clear.items() if k.lower() not in (KEYSAFE.lower(), ENCRYPTED_DATA.lower()))
    for setting, value in body["settings"]:
        merged[setting] = value
    order = {setting: index for index, setting in enumerate(body["order"])}
    ordered = sorted(merged.items(), key=lambda kv: order.get(kv[0].lower(), len(order)))
    return VmxState(VmxConfig.from_items(ordered), reference, record)


def _parse_data(raw: bytes, vmx: os.PathLike[str]) -> dict[str, Any]:
    try:
        body = json.loads(raw)
        if not (isinstance(body, dict) and isinstance(body.get("settings"), list)
                and all(isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p) for p in body["settings"])
                and isinstance(body.get("order"), list) and all(isinstance(k, str) for k in body["order"])):
            raise ValueError("unexpected layout")
        return body
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise VmError(f"{ENCRYPTED_DATA} is malformed ({reason})", vmx) from None


def render_vmx(settings: VmxConfig, target: DataKey | None, record: EncryptionRecord | None = None) -> bytes:
    """The ``.vmx`` bytes for ``settings``, split and encrypted if ``target`` is given.

    ``record`` (the VM id and its encrypted files) goes into ``encryption.data`` with the settings.
    """
    if target is None:
        return settings.render().encode()
    clear, sensitive = settings.split_sensitive()
    body: dict[str, Any] = {"settings": sensitive.items(), "order": [key.lower() for key in settings]}
    if record is not None:
        body.update(record.to_json())
    blob = container.encrypt_bytes(json.dumps(body).encode(), target, label=VMX_DATA_LABEL, unit_size=512,
                                   vm_id=record.vm_id if record else "")
    clear[KEYSAFE] = target.reference.to_keysafe()
    clear[ENCRYPTED_DATA] = base64.b64encode(blob).decode()
    return clear.render().encode()


def set_listed(home: VmHome, key: DataKey, vm_file: VmFile, listed: bool) -> None:
    """Add a newly encrypted home file to the VM's encryption record (or drop one about to go)."""
    with lock_vm(home, "update the encryption record"):
        state = read_vmx(home, None, key=key)
        if state.record is None:  # a record from before records existed: nothing to keep up to date
            return
        files = dict(state.record.files)
        name = relative_name(home, vm_file.path)
        if listed:
            files[name] = vm_file.kind.value
        else:
            files.pop(name, None)
        if files != state.record.files:
            write_atomic(home.vmx_path, render_vmx(state.settings, key, EncryptionRecord(state.record.vm_id, files)))


def unlist_home_file(home: VmHome, keys: KeyManager, vm_file: VmFile) -> None:
    """Drop a home file that is about to be deleted from the VM's encryption record (clear VM: nothing to do)."""
    with lock_vm(home, "update the encryption record"):
        reference = read_vmx(home, None).reference
        if reference is not None:
            set_listed(home, keys.unlock(reference), vm_file, False)


def check_vm_files(home: VmHome, keys: KeyManager, state: VmxState | None = None, *,
                   skip: tuple[FileKind, ...] = ()) -> VmxState:
    """What a power-on or a restore checks (headers only, no MAC pass over big files): the files the
    VM's record lists are there and are containers, and every container is bound to this VM, its role
    and its key."""
    state = state or read_vmx(home, keys)
    if state.reference is None:
        return state
    allowed = {state.reference}
    vm_id = state.record.vm_id if state.record else None
    if state.record is not None:
        check_listed(home, state.record, allowed, skip=skip)
    for vm_file in home.home_files() + home.disk_files():
        if vm_file.kind not in skip and container.is_container(vm_file.path):
            check_binding(vm_file, container.read_header(vm_file.path), vm_id, allowed)
    return state


# ----------------------------------------------------------------------------- convergence


def _converge_file(vm_file: VmFile, target: DataKey | None, keys: KeyManager, progress: ProgressFn | None,
                   vm_id: str = "", resume: disk_stream.Resume | None = None) -> bool:
    """Bring one file to ``target``; return True if it had to change."""
    report = (lambda done, total: progress(vm_file, done, total)) if progress else None
    if vm_file.kind == FileKind.DISK:
        return _converge_disk(vm_file, target, keys, report, vm_id, resume)
    if not container.is_container(vm_file.path):
        if target is None:
            return False
        disk = vm_file.kind == FileKind.DISK
        container.encrypt_file_in_place(
            vm_file.path,
            target,
            label=vm_file.label,
            mac=Mac.NONE if disk else Mac.HMAC_SHA256,
            header_align=container.DISK_HEADER_ALIGN if disk else 0,
            progress=report,
            vm_id=vm_id,
        )
        return True
    header = container.read_header(vm_file.path)
    if target is None:
        container.decrypt_file(vm_file.path, keys.header_key, progress=report)
        return True
    if header.reference == target.reference:
        return False
    container.recrypt_file(vm_file.path, keys.header_key, target, progress=report, vm_id=vm_id)
    return True


def _converge_disk(vm_file: VmFile, target: DataKey | None, keys: KeyManager,
                   report: Callable[[int, int], None] | None, vm_id: str, resume: disk_stream.Resume | None) -> bool:
    """Disks stream sparse and resumable (see vmcrypt.disk_stream)."""
    if resume is None or not resume.done:
        disk_stream.discard_partial(vm_file.path)
    if not container.is_container(vm_file.path):
        if target is None:
            return False
        generation = 1
        disk_stream.encrypt_disk(vm_file.path, target, label=vm_file.label, vm_id=vm_id, generation=generation,
                                 resume=resume, progress=report)
        return True
    header = container.read_header(vm_file.path)
    if target is None:
        disk_stream.decrypt_disk(vm_file.path, keys.header_key, resume=resume, progress=report)
        return True
    if header.reference == target.reference:
        return False
    disk_stream.recrypt_disk(vm_file.path, keys.header_key, target, vm_id=vm_id, resume=resume, progress=report)
    return True


def _disk_resume(home: VmHome, journal: Journal, current: DataKey | None, vm_file: VmFile) -> disk_stream.Resume | None:
    """Resume state of one disk: where the journal says it got, and a checkpoint that records progress."""
    if vm_file.kind != FileKind.DISK:
        return None
    name = vm_file.path.name

    def checkpoint(done: int) -> None:
        journal.disks[name] = done
        journal.save(home, current if journal.mac_key else None)

    return disk_stream.Resume(journal.disks.get(name, 0), checkpoint)


def _files(home: VmHome, include_disks: bool) -> list[VmFile]:
    return home.home_files() + (home.disk_files() if include_disks else [])


@dataclass
class OperationResult:
    """What a run changed, the key the VM is under afterwards, and whether it finished an interrupted run."""

    operation: Operation
    changed: list[VmFile]
    reference: KeyReference | None
    resumed: bool


def _run(
    home: VmHome,
    keys: KeyManager,
    operation: Operation,
    make_target: Callable[[VmxState], DataKey | None],
    include_disks: bool,
    progress: ProgressFn | None,
) -> OperationResult:
    with lock_vm(home, operation.value):
        return _run_locked(home, keys, operation, make_target, include_disks, progress)


def _run_locked(
    home: VmHome,
    keys: KeyManager,
    operation: Operation,
    make_target: Callable[[VmxState], DataKey | None],
    include_disks: bool,
    progress: ProgressFn | None,
) -> OperationResult:
    journal = Journal.load(home)
    resumed = journal is not None and journal.operation == operation
    state = read_vmx(home, keys)
    current = keys.unlock(state.reference) if state.reference else None
    trusted = (journal is not None and current is not None and journal.authentic(current)
               and (state.record is None or journal.vm_id == state.record.vm_id))
    if resumed:
        assert journal is not None
        include_disks = include_disks or journal.include_disks
    else:
        if journal is not None and journal.target_reference is not None and operation != Operation.DECRYPT:
            raise InterruptedOperationError(
                f"an interrupted '{journal.operation.value}' (started {journal.started}) must finish first: "
                f"run it again to resume, or decrypt to roll back",
                home.vmx_path,
            )
        # A decrypt that follows an interrupted encryption must reach disks that it encrypted.
        include_disks = include_disks or (journal.include_disks if journal else False)
    if state.record is not None:
        vm_id = state.record.vm_id
    elif journal is not None and journal.vm_id:
        vm_id = journal.vm_id
    else:
        vm_id = vm_id_from_settings(state.settings)
    # Keys the VM's files may be under: its key safe's; while an operation converges, also the keys
    # its journal names (of an encrypted VM, only when the journal is authentic).
    allowed: set[KeyReference] = {state.reference} if state.reference else set()
    if journal is not None and (trusted or state.reference is None):
        allowed |= journal.known_references()
    files = _files(home, include_disks)
    _preflight(home, files, state.record, keys, vm_id, allowed,
               plain_ok=trusted and journal is not None and journal.target is None)
    if resumed:
        assert journal is not None
        reference = journal.target_reference
        target = keys.unlock(reference) if reference else None
    else:
        target = make_target(state)
    if not resumed:
        references = allowed | ({target.reference} if target else set())
        journal = Journal(operation, target.reference.to_keysafe() if target else None, include_disks, vm_id=vm_id,
                          references=tuple(sorted(r.to_keysafe() for r in references)))
        journal.save(home, current)
    plan = getattr(progress, "plan", None)
    if plan is not None:  # one overall bar: announce every file's size before the first starts
        plan({f: f.path.stat().st_size for f in files})
    try:
        changed = [f for f in files
                   if _converge_file(f, target, keys, progress, vm_id, _disk_resume(home, journal, current, f))]
        record = record_for(home, vm_id, files) if target else None
        new_vmx = render_vmx(state.settings, target, record)
        if new_vmx != home.vmx_path.read_bytes():
            write_atomic(home.vmx_path, new_vmx)
    except (VmcryptError, OSError) as failure:
        if operation == Operation.ENCRYPT and not resumed and state.reference is None:
            _roll_back(home, keys, files, failure)
        raise
    if target is not None and container.is_container(home.nvram_path):
        # the .nvram's generation under its new key, outside the VM (see vm_vtpm: rollback detection)
        keys.provider(target.reference.provider_id).record_generation(
            target.reference.key_id, NVRAM_ROLE, container.read_header(home.nvram_path).generation)
    Journal.remove(home)
    return OperationResult(operation, changed, target.reference if target else None, resumed)


def _preflight(home: VmHome, files: list[VmFile], record: EncryptionRecord | None, keys: KeyManager, vm_id: str,
               allowed: set[KeyReference], *, plain_ok: bool) -> None:
    """Check every file before changing any, so a bad file stops the operation while the VM is still
    consistent: the listed files are there, every container is bound to this VM, its role and one of
    ``allowed``, opens, and (when it has a MAC) is intact."""
    if record is not None:
        check_listed(home, record, allowed, plain_ok=plain_ok)
    for vm_file in files:
        if container.is_container(vm_file.path):
            header = container.read_header(vm_file.path)
            check_binding(vm_file, header, vm_id, allowed)
            if header.mac == Mac.HMAC_SHA256:
                container.verify_file(vm_file.path, keys.header_key)
            else:
                container.verify_key(vm_file.path, keys.header_key)


def _roll_back(home: VmHome, keys: KeyManager, files: list[VmFile], failure: BaseException) -> None:
    """Undo a failed first-time encryption; if even that fails, the journal stays for a later decrypt."""
    try:
        for vm_file in files:
            _converge_file(vm_file, None, keys, None)
    except (VmcryptError, OSError) as second:
        failure.add_note(f"rolling back also failed ({second}); run 'vmcrypt decrypt' to finish the roll-back")
        return
    Journal.remove(home)
    failure.add_note("the VM was rolled back to its unencrypted state")


def encrypt_vm(
    home: VmHome,
    keys: KeyManager,
    *,
    provider: str | None = None,
    include_disks: bool = False,
    progress: ProgressFn | None = None,
) -> OperationResult:
    """Encrypt every home file (and disks if asked) under a new DEK wrapped by a new KEK."""

    def target(state: VmxState) -> DataKey:
        if state.reference is not None:
            if not include_disks:
                raise VmError("the VM is already encrypted", home.vmx_path)
            return keys.unlock(state.reference)  # already encrypted: add the disks under the same key
        return keys.new_data_key(provider)

    return _run(home, keys, Operation.ENCRYPT, target, include_disks, progress)


def decrypt_vm(home: VmHome, keys: KeyManager, *, progress: ProgressFn | None = None) -> OperationResult:
    """Decrypt every encrypted file of the VM, disks included; also rolls back an interrupted operation."""

    def target(state: VmxState) -> None:
        journal = Journal.load(home)
        if state.reference is None and journal is None and not any(
            container.is_container(f.path) for f in _files(home, True)
        ):
            raise VmError("the VM is not encrypted", home.vmx_path)
        return None

    return _run(home, keys, Operation.DECRYPT, target, True, progress)


def rekey_vm(
    home: VmHome,
    keys: KeyManager,
    *,
    deep: bool = False,
    provider: str | None = None,
    progress: ProgressFn | None = None,
) -> OperationResult:
    """Shallow: wrap the same DEK under a new KEK. Deep: a new DEK, every file re-encrypted."""
    operation = Operation.DEEP_REKEY if deep else Operation.SHALLOW_REKEY

    def target(state: VmxState) -> DataKey:
        if state.reference is None:
            raise VmError("the VM is not encrypted; nothing to rekey", home.vmx_path)
        current = keys.unlock(state.reference)
        return keys.new_data_key(provider or state.reference.provider_id) if deep else keys.wrap(
            current.dek, provider or state.reference.provider_id
        )

    return _run(home, keys, operation, target, True, progress)


# ----------------------------------------------------------------------------- describe


def describe_vm(home: VmHome, keys: KeyManager | None = None) -> dict[str, Any]:
    """What is encrypted and under which key; needs no key material."""
    state = read_vmx(home, None)
    reference = state.reference
    provider_name = provider_kind = None
    if reference and keys is not None:
        with contextlib.suppress(VmcryptError):
            provider = keys.registry.get(reference.provider_id)
            provider_name, provider_kind = provider.name, provider.kind
    journal = Journal.load(home)

    def file_entry(vm_file: VmFile) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "path": vm_file.path.name if vm_file.path.parent == home.directory else str(vm_file.path.relative_to(home.directory)),
            "kind": vm_file.kind.value,
            "size": vm_file.path.stat().st_size,
            "encrypted": False,
        }
        if container.is_container(vm_file.path):
            try:
                header = container.read_header(vm_file.path)
                entry.update(
                    encrypted=True,
                    key_id=header.reference.key_id,
                    generation=header.generation,
                    unit_size=header.unit_size,
                    mac=header.mac.name,
                    matches_key_safe=header.reference == reference,
                )
            except ContainerError as exc:
                entry.update(encrypted=True, error=exc.reason)
        return entry

    files = [file_entry(f) for f in home.home_files() + home.disk_files()]
    return {
        "vm": home.name,
        "vmx": str(home.vmx_path),
        "encrypted": reference is not None,
        "cipher": CIPHER_NAME if reference else None,
        "key_provider": {"id": reference.provider_id, "name": provider_name, "kind": provider_kind}
        if reference else None,
        "key_id": reference.key_id if reference else None,
        "dek_wrap": reference.wrap_algorithm.label if reference else None,
        "vmx_sensitive_data_encrypted": ENCRYPTED_DATA in state.settings,
        "files": files,
        "interrupted_operation": (
            {"operation": journal.operation.value, "started": journal.started} if journal else None
        ),
    }


def open_vm(path: str | os.PathLike[str]) -> VmHome:
    """The VM home at ``path`` (its ``.vmx`` or its directory)."""
    return VmHome(path)
