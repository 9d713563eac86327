"""Encrypt, decrypt and rekey a whole VM, surviving a crash at any point.

Every operation is one idea: *converge* each file of the VM towards a target
key (or towards plaintext). A file is either plain or a self-describing
container whose header names its key, so the state of each file can be read
off the file itself. A small journal in the VM directory records the target
(a key safe, no secret) before the first file changes; if the process dies,
running the same command again resumes towards that target, and running
``decrypt`` instead rolls every file back to plaintext. The ``.vmx`` is
written last, so it only claims encryption once every file is encrypted.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from durable.atomic import fsync_directory, remove_stale_temp_files, write_atomic
from vmcrypt import container
from vmcrypt.container import Mac
from vmcrypt.errors import ContainerError, InterruptedOperationError, VmcryptError, VmError
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.vm import FileKind, VmFile, VmHome
from vmcrypt.vmx import ENCRYPTED_DATA, KEYSAFE, VmxConfig
from vmcrypt.xts import CIPHER_NAME

VMX_DATA_LABEL = "vmx-encryption-data"
JOURNAL_FORMAT = 1

# (file, bytes done, bytes total) -> None; called as files progress
ProgressFn = Callable[[VmFile, int, int], None]


class Operation(str, enum.Enum):
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    SHALLOW_REKEY = "rekey"
    DEEP_REKEY = "deep-rekey"


@dataclass
class Journal:
    operation: Operation
    target: str | None  # key safe of the target key, None for plaintext
    include_disks: bool
    started: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))

    @property
    def target_reference(self) -> KeyReference | None:
        return KeyReference.from_keysafe(self.target) if self.target else None

    def save(self, home: VmHome) -> None:
        body = {
            "format": JOURNAL_FORMAT,
            "operation": self.operation.value,
            "target": self.target,
            "include_disks": self.include_disks,
            "started": self.started,
        }
        write_atomic(home.journal_path, json.dumps(body, indent=2).encode(), mode=0o600)

    @classmethod
    def load(cls, home: VmHome) -> "Journal | None":
        try:
            body = json.loads(home.journal_path.read_text())
            if not isinstance(body, dict):
                raise ValueError(f"a JSON {type(body).__name__}, not an object")
            if body.get("format") != JOURNAL_FORMAT:
                raise ValueError(f"format {body.get('format')!r}")
            target, include_disks, started = body["target"], body["include_disks"], body["started"]
            if target is not None and not isinstance(target, str):
                raise ValueError(f"target {target!r} is not a key safe")
            if not isinstance(include_disks, bool) or not isinstance(started, str):
                raise ValueError("include_disks or started has the wrong type")
            return cls(Operation(body["operation"]), target, include_disks, started)
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError, RecursionError) as exc:  # TypeError: an unhashable operation
            reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
            raise VmError(f"the operation journal is unreadable ({reason})", home.journal_path) from None

    @staticmethod
    def remove(home: VmHome) -> None:
        with contextlib.suppress(FileNotFoundError):
            home.journal_path.unlink()
        fsync_directory(home.directory)


# ----------------------------------------------------------------------------- .vmx


@dataclass
class VmxState:
    settings: VmxConfig
    reference: KeyReference | None


def read_vmx(home: VmHome, keys: KeyManager | None) -> VmxState:
    """All settings of the VM (sensitive ones decrypted when ``keys`` is given)."""
    try:
        text = home.vmx_path.read_text()
    except UnicodeDecodeError as exc:
        raise VmError(f"not a text file ({exc.reason} at byte {exc.start})", home.vmx_path) from None
    clear = VmxConfig.parse(text, str(home.vmx_path))
    keysafe = clear.get(KEYSAFE)
    reference = KeyReference.from_keysafe(keysafe) if keysafe else None
    blob = clear.get(ENCRYPTED_DATA)
    if blob is None or keys is None:
        return VmxState(clear, reference)
    try:
        raw = container.decrypt_bytes(base64.b64decode(blob, validate=True), keys.header_key, name=f"{home.vmx_path} ({ENCRYPTED_DATA})")
        settings, order_list = _sensitive_settings(json.loads(raw))
    except (ValueError, binascii.Error, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise VmError(f"{ENCRYPTED_DATA} is malformed ({reason})", home.vmx_path) from None
    merged = VmxConfig.from_items((k, v) for k, v in clear.items() if k.lower() not in (KEYSAFE.lower(), ENCRYPTED_DATA.lower()))
    for key, value in settings:
        merged[key] = value
    order = {key: index for index, key in enumerate(order_list)}
    ordered = sorted(merged.items(), key=lambda kv: order.get(kv[0].lower(), len(order)))
    return VmxState(VmxConfig.from_items(ordered), reference)


def _sensitive_settings(body: Any) -> tuple[list[tuple[str, str]], list[str]]:
    """The settings and key order ``render_vmx`` wrote into encryption.data; ValueError if that is not what it holds."""
    if not isinstance(body, dict):
        raise ValueError(f"a JSON {type(body).__name__}, not an object")
    settings, order = body.get("settings"), body.get("order")
    if not isinstance(settings, list) or not all(
        isinstance(item, list) and len(item) == 2 and all(isinstance(part, str) for part in item) for item in settings
    ):
        raise ValueError("settings are not a list of [key, value] strings")
    if not isinstance(order, list) or not all(isinstance(key, str) for key in order):
        raise ValueError("the key order is not a list of strings")
    return [(key, value) for key, value in settings], order


def render_vmx(settings: VmxConfig, target: DataKey | None) -> bytes:
    """The ``.vmx`` bytes for ``settings``, split and encrypted if ``target`` is given."""
    if target is None:
        return settings.render().encode()
    clear, sensitive = settings.split_sensitive()
    body = {"settings": sensitive.items(), "order": [key.lower() for key in settings]}
    blob = container.encrypt_bytes(json.dumps(body).encode(), target, label=VMX_DATA_LABEL, unit_size=512)
    clear[KEYSAFE] = target.reference.to_keysafe()
    clear[ENCRYPTED_DATA] = base64.b64encode(blob).decode()
    return clear.render().encode()


# ----------------------------------------------------------------------------- convergence


def _converge_file(vm_file: VmFile, target: DataKey | None, keys: KeyManager, progress: ProgressFn | None) -> bool:
    """Bring one file to ``target``; return True if it had to change."""
    report = (lambda done, total: progress(vm_file, done, total)) if progress else None
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
        )
        return True
    header = container.read_header(vm_file.path)
    if target is None:
        container.decrypt_file(vm_file.path, keys.header_key, progress=report)
        return True
    if header.reference == target.reference:
        return False
    container.recrypt_file(vm_file.path, keys.header_key, target, progress=report)
    return True


def _files(home: VmHome, include_disks: bool) -> list[VmFile]:
    return home.home_files() + (home.disk_files() if include_disks else [])


@dataclass
class OperationResult:
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
    remove_stale_temp_files(home.directory)
    journal = Journal.load(home)
    resumed = journal is not None and journal.operation == operation
    state = read_vmx(home, keys)
    if resumed:
        assert journal is not None
        reference = journal.target_reference
        target = keys.unlock(reference) if reference else None
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
        target = make_target(state)
    files = _files(home, include_disks)
    _preflight(files, keys)
    if not resumed:
        journal = Journal(operation, target.reference.to_keysafe() if target else None, include_disks)
        journal.save(home)
    try:
        changed = [f for f in files if _converge_file(f, target, keys, progress)]
        new_vmx = render_vmx(state.settings, target)
        if new_vmx != home.vmx_path.read_bytes():
            write_atomic(home.vmx_path, new_vmx)
    except (VmcryptError, OSError) as failure:
        if operation == Operation.ENCRYPT and not resumed and state.reference is None:
            _roll_back(home, keys, files, failure)
        raise
    Journal.remove(home)
    return OperationResult(operation, changed, target.reference if target else None, resumed)


def _preflight(files: list[VmFile], keys: KeyManager) -> None:
    """Open and verify every encrypted file before changing any, so a bad file stops the
    operation while the VM is still consistent."""
    for vm_file in files:
        if container.is_container(vm_file.path):
            header = container.read_header(vm_file.path)
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
    provider_name = None
    if reference and keys is not None:
        with contextlib.suppress(VmcryptError):
            provider_name = keys.registry.get(reference.provider_id).name
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
        "key_provider": {"id": reference.provider_id, "name": provider_name} if reference else None,
        "key_id": reference.key_id if reference else None,
        "dek_wrap": reference.wrap_algorithm.label if reference else None,
        "vmx_sensitive_data_encrypted": ENCRYPTED_DATA in state.settings,
        "files": files,
        "interrupted_operation": (
            {"operation": journal.operation.value, "started": journal.started} if journal else None
        ),
    }


def open_vm(path: str | os.PathLike[str]) -> VmHome:
    return VmHome(path)
