"""Privileges, built-in roles and what each VM operation requires, with vSphere's names.

Pure data and set arithmetic, no I/O: the inventory stores who holds which role
where; this module says whether that is enough for an operation. The rule that
matters most: on an *encrypted* VM, console, file download and vTPM removal also
need a ``Cryptographer.*`` privilege, which *No Cryptography Administrator* lacks.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Privilege(str, enum.Enum):
    CRYPTO_ACCESS = "Cryptographer.Access"
    CRYPTO_ENCRYPT = "Cryptographer.Encrypt"
    CRYPTO_ENCRYPT_NEW = "Cryptographer.EncryptNew"
    CRYPTO_DECRYPT = "Cryptographer.Decrypt"
    CRYPTO_CLONE = "Cryptographer.Clone"
    CRYPTO_MIGRATE = "Cryptographer.Migrate"
    CRYPTO_RECRYPT = "Cryptographer.Recrypt"
    CRYPTO_REGISTER_HOST = "Cryptographer.RegisterHost"
    CRYPTO_REGISTER_VM = "Cryptographer.RegisterVM"
    CRYPTO_ADD_DISK = "Cryptographer.AddDisk"
    CRYPTO_MANAGE_KEYS = "Cryptographer.ManageKeys"
    CRYPTO_MANAGE_KEY_SERVERS = "Cryptographer.ManageKeyServers"
    CRYPTO_MANAGE_ENCRYPTION_POLICY = "Cryptographer.ManageEncryptionPolicy"
    CRYPTO_READ_KEY_SERVERS_INFO = "Cryptographer.ReadKeyServersInfo"
    CONSOLE = "VirtualMachine.Interact.ConsoleInteract"
    POWER_ON = "VirtualMachine.Interact.PowerOn"
    POWER_OFF = "VirtualMachine.Interact.PowerOff"
    SUSPEND = "VirtualMachine.Interact.Suspend"
    ADD_REMOVE_DEVICE = "VirtualMachine.Config.AddRemoveDevice"
    SETTINGS = "VirtualMachine.Config.Settings"
    CREATE_SNAPSHOT = "VirtualMachine.State.CreateSnapshot"
    REVERT_SNAPSHOT = "VirtualMachine.State.RevertToSnapshot"
    CLONE = "VirtualMachine.Provisioning.Clone"
    VM_CREATE = "VirtualMachine.Inventory.Create"
    VM_REGISTER = "VirtualMachine.Inventory.Register"
    VM_UNREGISTER = "VirtualMachine.Inventory.Unregister"
    VM_DELETE = "VirtualMachine.Inventory.Delete"
    COLD_MIGRATE = "Resource.ColdMigrate"
    DATASTORE_BROWSE = "Datastore.Browse"
    DATASTORE_FILES = "Datastore.FileManagement"
    DATASTORE_CONFIG = "Datastore.Config"
    HOST_ADD = "Host.Inventory.AddStandaloneHost"
    SYSTEM_VIEW = "System.View"
    SYSTEM_READ = "System.Read"
    MODIFY_PERMISSIONS = "Authorization.ModifyPermissions"
    MODIFY_ROLES = "Authorization.ModifyRoles"


ALL_PRIVILEGES = frozenset(Privilege)
CRYPTOGRAPHER = frozenset(p for p in Privilege if p.value.startswith("Cryptographer."))
READ_ONLY = frozenset({Privilege.SYSTEM_VIEW, Privilege.SYSTEM_READ})


@dataclass(frozen=True)
class Role:
    name: str
    privileges: frozenset[Privilege]
    builtin: bool = False


ADMINISTRATOR = Role("Administrator", ALL_PRIVILEGES, builtin=True)
NO_CRYPTO_ADMINISTRATOR = Role("No Cryptography Administrator", ALL_PRIVILEGES - CRYPTOGRAPHER, builtin=True)
READ_ONLY_ROLE = Role("Read-only", READ_ONLY, builtin=True)
NO_ACCESS = Role("No Access", frozenset(), builtin=True)
BUILTIN_ROLES = {role.name: role for role in (ADMINISTRATOR, NO_CRYPTO_ADMINISTRATOR, READ_ONLY_ROLE, NO_ACCESS)}
TRUSTED_ADMINS_GROUP = "TrustedAdmins"


class Operation(str, enum.Enum):
    CREATE_VM = "create VM"
    ADD_VTPM = "add vTPM"
    REMOVE_VTPM = "remove vTPM"
    ENCRYPT = "encrypt"
    DECRYPT = "decrypt"
    REKEY = "rekey"
    POWER_ON = "power on"
    POWER_ON_ACCEPT_ROLLBACK = "power on accepting a rolled-back .nvram"
    POWER_OFF = "power off"
    SUSPEND = "suspend"
    MIGRATE = "migrate"
    MIGRATE_AWAY = "migrate to another management home"
    BACKUP = "back up"
    RESTORE = "restore"
    CONSOLE = "open console"
    BROWSE = "browse datastore"
    DOWNLOAD = "download file"
    REGISTER = "register"
    UNREGISTER = "unregister"
    SNAPSHOT = "take snapshot"
    CLONE = "clone"
    CLONE_EXACT = "clone with the same vTPM"
    REVERT = "revert to snapshot"
    DELETE = "delete"
    DELETE_WITH_KEY = "delete and destroy its key"
    ADD_DATASTORE = "add datastore"
    ADD_HOST = "add host"
    MANAGE_USERS = "manage users and permissions"


_BASE: dict[Operation, frozenset[Privilege]] = {
    Operation.CREATE_VM: frozenset({Privilege.VM_CREATE}),
    Operation.ADD_VTPM: frozenset({Privilege.ADD_REMOVE_DEVICE, Privilege.CRYPTO_ENCRYPT}),
    Operation.REMOVE_VTPM: frozenset({Privilege.ADD_REMOVE_DEVICE}),
    Operation.ENCRYPT: frozenset({Privilege.SETTINGS, Privilege.CRYPTO_ENCRYPT}),
    Operation.DECRYPT: frozenset({Privilege.SETTINGS, Privilege.CRYPTO_DECRYPT}),
    Operation.REKEY: frozenset({Privilege.SETTINGS, Privilege.CRYPTO_RECRYPT}),
    Operation.POWER_ON: frozenset({Privilege.POWER_ON}),
    # an older vTPM state comes back (deleted NV data, a reset lockout counter): like a revert, and
    # the key's record at the key provider is lowered
    Operation.POWER_ON_ACCEPT_ROLLBACK: frozenset({Privilege.POWER_ON, Privilege.REVERT_SNAPSHOT}),
    Operation.POWER_OFF: frozenset({Privilege.POWER_OFF}),
    Operation.SUSPEND: frozenset({Privilege.SUSPEND}),
    Operation.MIGRATE: frozenset({Privilege.COLD_MIGRATE}),
    Operation.MIGRATE_AWAY: frozenset({Privilege.COLD_MIGRATE}),
    Operation.BACKUP: frozenset({Privilege.DATASTORE_BROWSE, Privilege.DATASTORE_FILES}),
    Operation.RESTORE: frozenset({Privilege.VM_REGISTER, Privilege.DATASTORE_FILES}),
    Operation.CONSOLE: frozenset({Privilege.CONSOLE}),
    Operation.BROWSE: frozenset({Privilege.DATASTORE_BROWSE}),
    Operation.DOWNLOAD: frozenset({Privilege.DATASTORE_BROWSE, Privilege.DATASTORE_FILES}),
    Operation.REGISTER: frozenset({Privilege.VM_REGISTER}),
    Operation.UNREGISTER: frozenset({Privilege.VM_UNREGISTER}),
    Operation.ADD_DATASTORE: frozenset({Privilege.DATASTORE_CONFIG}),
    Operation.ADD_HOST: frozenset({Privilege.HOST_ADD}),
    Operation.MANAGE_USERS: frozenset({Privilege.MODIFY_PERMISSIONS}),
    Operation.DELETE: frozenset({Privilege.VM_DELETE}),
    Operation.DELETE_WITH_KEY: frozenset({Privilege.VM_DELETE, Privilege.CRYPTO_MANAGE_KEYS}),
    Operation.SNAPSHOT: frozenset({Privilege.CREATE_SNAPSHOT}),
    Operation.CLONE: frozenset({Privilege.CLONE}),
    Operation.CLONE_EXACT: frozenset({Privilege.CLONE, Privilege.CRYPTO_CLONE}),
    Operation.REVERT: frozenset({Privilege.REVERT_SNAPSHOT}),
}
# What an encrypted VM adds: reading its plaintext (console, files) or taking its vTPM away.
_ON_ENCRYPTED: dict[Operation, frozenset[Privilege]] = {
    Operation.CONSOLE: frozenset({Privilege.CRYPTO_ACCESS}),
    Operation.DOWNLOAD: frozenset({Privilege.CRYPTO_ACCESS}),
    Operation.REMOVE_VTPM: frozenset({Privilege.CRYPTO_DECRYPT}),
    Operation.REGISTER: frozenset({Privilege.CRYPTO_REGISTER_VM}),
    Operation.CLONE: frozenset({Privilege.CRYPTO_CLONE}),
    Operation.BACKUP: frozenset({Privilege.CRYPTO_ACCESS}),
    Operation.MIGRATE_AWAY: frozenset({Privilege.CRYPTO_MIGRATE}),
    Operation.RESTORE: frozenset({Privilege.CRYPTO_REGISTER_VM}),
    Operation.POWER_ON_ACCEPT_ROLLBACK: frozenset({Privilege.CRYPTO_MANAGE_KEYS}),
}


def required_privileges(operation: Operation, encrypted: bool) -> frozenset[Privilege]:
    extra = _ON_ENCRYPTED.get(operation, frozenset()) if encrypted else frozenset()
    return _BASE[operation] | extra


def missing_privileges(held: frozenset[Privilege], operation: Operation, encrypted: bool) -> list[Privilege]:
    """The privileges ``operation`` needs that ``held`` lacks, in a stable order."""
    return sorted(required_privileges(operation, encrypted) - held, key=lambda p: p.value)
