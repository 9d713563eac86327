"""vmcrypt: VM encryption with key providers and a vTPM, as a library and as the ``vmcrypt`` command.

The public surface, importable as ``from vmcrypt import ...``:

- the management plane: ``Management`` (one management home: inventory, key
  providers, CA, vTPM host) and ``UserSession`` (the operations of a logged-in user:
  create, encrypt/decrypt/rekey, power on/off, backup/restore, ...), ``PermissionDenied``;
- VM homes without an inventory: ``VmHome``, ``VmSpec``, ``create_vm``, and the
  encryption operations ``encrypt_vm``, ``decrypt_vm``, ``rekey_vm``, ``describe_vm``;
- keys: ``KeyManager`` (wraps DEKs with the KEK of a provider), ``ProviderRegistry``
  (the providers of a home), ``KeyProvider``, ``NativeKeyProvider``,
  ``KmipKeyProvider`` and ``KmipSettings`` (KMIP needs ``pip install 'vmcrypt[kmip]'``);
- backup and restore: ``backup_vm``, ``verify_backup``, ``restore_vm``, ``Manifest``;
- errors: ``VmcryptError`` and its subclasses ``ContainerError``, ``WrongKeyError``,
  ``IntegrityError``, ``KeyProviderError``, ``KeyNotFoundError``, ``VmError``,
  ``RollbackError``, ``BackupError``; ``InventoryError`` (users, names, datastores).

Names are imported on first use (PEP 562): ``import vmcrypt`` stays cheap for the
command-line tools, and PyKMIP is imported only when a KMIP server is contacted.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from vtpm.lazy_exports import lazy_exports

_EXPORTS: dict[str, str] = {
    "Management": "vmcrypt.management",
    "UserSession": "vmcrypt.management",
    "PermissionDenied": "vmcrypt.gate",
    "VmHome": "vmcrypt.vm",
    "VmSpec": "vmcrypt.vm",
    "create_vm": "vmcrypt.vm",
    "encrypt_vm": "vmcrypt.vm_encryption",
    "decrypt_vm": "vmcrypt.vm_encryption",
    "rekey_vm": "vmcrypt.vm_encryption",
    "describe_vm": "vmcrypt.vm_encryption",
    "KeyManager": "vmcrypt.keys",
    "ProviderRegistry": "vmcrypt.providers.registry",
    "KeyProvider": "vmcrypt.providers.base",
    "NativeKeyProvider": "vmcrypt.providers.native",
    "KmipKeyProvider": "vmcrypt.providers.kmip",
    "KmipSettings": "vmcrypt.providers.kmip",
    "backup_vm": "vmcrypt.backup",
    "verify_backup": "vmcrypt.backup",
    "restore_vm": "vmcrypt.backup",
    "Manifest": "vmcrypt.backup",
    "BackupError": "vmcrypt.backup",
    "VmcryptError": "vmcrypt.errors",
    "ContainerError": "vmcrypt.errors",
    "WrongKeyError": "vmcrypt.errors",
    "IntegrityError": "vmcrypt.errors",
    "KeyProviderError": "vmcrypt.errors",
    "KeyNotFoundError": "vmcrypt.errors",
    "VmError": "vmcrypt.errors",
    "RollbackError": "vmcrypt.errors",
    "InventoryError": "vmcrypt.inventory",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from vmcrypt.backup import BackupError, Manifest, backup_vm, restore_vm, verify_backup
    from vmcrypt.errors import (
        ContainerError,
        IntegrityError,
        KeyNotFoundError,
        KeyProviderError,
        RollbackError,
        VmcryptError,
        VmError,
        WrongKeyError,
    )
    from vmcrypt.gate import PermissionDenied
    from vmcrypt.inventory import InventoryError
    from vmcrypt.keys import KeyManager
    from vmcrypt.management import Management, UserSession
    from vmcrypt.providers.base import KeyProvider
    from vmcrypt.providers.kmip import KmipKeyProvider, KmipSettings
    from vmcrypt.providers.native import NativeKeyProvider
    from vmcrypt.providers.registry import ProviderRegistry
    from vmcrypt.vm import VmHome, VmSpec, create_vm
    from vmcrypt.vm_encryption import decrypt_vm, describe_vm, encrypt_vm, rekey_vm


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
