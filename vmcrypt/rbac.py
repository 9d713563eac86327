"""Privileges, built-in roles and what each operation of the management plane requires, with vSphere's names.

Pure data and set arithmetic, no I/O: the inventory stores who holds which role
where; this module says whether that is enough for an operation. The rule that
matters most: on an *encrypted* VM, console, file download and vTPM removal also
need a ``Cryptographer.*`` privilege, which *No Cryptography Administrator* lacks;
so do the key providers' keys and settings and every change to the CA.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Privilege(str, enum.Enum):
    """The privileges, with vSphere's names; ``Cryptographer.*`` ones guard what touches keys."""
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
    HOST_CONFIG_SETTINGS = "Host.Config.Settings"
    SYSTEM_VIEW = "System.View"
    SYSTEM_READ = "System.Read"
    MODIFY_PERMISSIONS = "Authorization.ModifyPermissions"
    MODIFY_ROLES = "Authorization.ModifyRoles"
    CERTIFICATES_MANAGE = "Certificates.Manage"


ALL_PRIVILEGES = frozenset(Privilege)
CRYPTOGRAPHER = frozenset(p for p in Privilege if p.value.startswith("Cryptographer."))
READ_ONLY = frozenset({Privilege.SYSTEM_VIEW, Privilege.SYSTEM_READ})


@dataclass(frozen=True)
class Role:
    """A named set of privileges; ``builtin`` marks the predefined ones (Administrator, No Cryptography Administrator).
    """
    name: str
    privileges: frozenset[Privilege]
    builtin: bool = False


ADMINISTRATOR = Role("Administrator", ALL_PRIVILEGES, builtin=True)
NO_CRYPTO_ADMINISTRATOR = Role("No Cryptography Administrator", ALL_PRIVILEGES - CRYPTOGRAPHER, builtin=True)
READ_ONLY_ROLE = Role("Read-only", READ_ONLY, builtin=True)
NO_ACCESS = Role("No Access", frozenset(), builtin=True)
BUILTIN_ROLES = {role.name: role for role in (ADMINISTRATOR, NO_CRYPTO_ADMINISTRATOR, READ_ONLY_ROLE, NO_ACCESS)}
TRUSTED_ADMINS_GROUP = "TrustedAdmins"


P = Privilege


class Operation(str, enum.Enum):
    """Every operation of the management plane, declared once: its name in the audit log, the privileges it
    needs, and what an encrypted target adds (reading its plaintext, taking its vTPM or keys away).

    Each route of the management service and each command of the CLI maps to one member; the gate
    (``vmcrypt.gate``) checks, audits and runs it."""

    # VMs
    LIST_VMS = ("list VMs", ())  # every VM the user can see (System.View on it) is listed
    DESCRIBE_VM = ("describe VM", (P.SYSTEM_READ,))
    CREATE_VM = ("create VM", (P.VM_CREATE,))
    REGISTER = ("register", (P.VM_REGISTER,), (P.CRYPTO_REGISTER_VM,))
    UNREGISTER = ("unregister", (P.VM_UNREGISTER,))
    DELETE = ("delete", (P.VM_DELETE,))
    DELETE_WITH_KEY = ("delete and destroy its key", (P.VM_DELETE, P.CRYPTO_MANAGE_KEYS))
    POWER_ON = ("power on", (P.POWER_ON,))
    # an older vTPM state comes back (deleted NV data, a reset lockout counter): like a revert, and
    # the key's record at the key provider is lowered
    POWER_ON_ACCEPT_ROLLBACK = ("power on accepting a rolled-back .nvram", (P.POWER_ON, P.REVERT_SNAPSHOT),
                                (P.CRYPTO_MANAGE_KEYS,))
    ACCEPT_ROLLBACK = ("accept a rolled-back .nvram", (P.REVERT_SNAPSHOT,), (P.CRYPTO_MANAGE_KEYS,))
    POWER_OFF = ("power off", (P.POWER_OFF,))
    SUSPEND = ("suspend", (P.SUSPEND,))
    RESUME = ("resume", (P.POWER_ON,))
    CLONE = ("clone", (P.CLONE,), (P.CRYPTO_CLONE,))
    CLONE_EXACT = ("clone with the same vTPM", (P.CLONE, P.CRYPTO_CLONE))
    MIGRATE = ("migrate", (P.COLD_MIGRATE,))
    MIGRATE_AWAY = ("migrate to another management home", (P.COLD_MIGRATE,), (P.CRYPTO_MIGRATE,))
    SNAPSHOT = ("take snapshot", (P.CREATE_SNAPSHOT,))
    REVERT = ("revert to snapshot", (P.REVERT_SNAPSHOT,))
    CONSOLE = ("open console", (P.CONSOLE,), (P.CRYPTO_ACCESS,))
    BROWSE = ("browse datastore", (P.DATASTORE_BROWSE,))
    DOWNLOAD = ("download file", (P.DATASTORE_BROWSE, P.DATASTORE_FILES), (P.CRYPTO_ACCESS,))
    ENCRYPT = ("encrypt", (P.SETTINGS, P.CRYPTO_ENCRYPT))
    DECRYPT = ("decrypt", (P.SETTINGS, P.CRYPTO_DECRYPT))
    REKEY = ("rekey", (P.SETTINGS, P.CRYPTO_RECRYPT))
    # the vTPM
    ADD_VTPM = ("add vTPM", (P.ADD_REMOVE_DEVICE, P.CRYPTO_ENCRYPT))
    REMOVE_VTPM = ("remove vTPM", (P.ADD_REMOVE_DEVICE,), (P.CRYPTO_DECRYPT,))
    # key providers
    LIST_PROVIDERS = ("list key providers", (P.SYSTEM_READ,))
    LIST_KEYS = ("list keys", (P.CRYPTO_MANAGE_KEYS,))
    ADD_NATIVE_PROVIDER = ("add native key provider", (P.CRYPTO_MANAGE_KEY_SERVERS,))
    ADD_KMIP_PROVIDER = ("add KMIP key provider", (P.CRYPTO_MANAGE_KEY_SERVERS,))
    EXPORT_KEYS = ("export keys", (P.CRYPTO_MANAGE_KEYS,))
    IMPORT_KEYS = ("import keys", (P.CRYPTO_MANAGE_KEYS,))
    TEST_PROVIDER = ("test key provider", (P.CRYPTO_MANAGE_KEY_SERVERS,))
    SET_DEFAULT_PROVIDER = ("set default key provider", (P.CRYPTO_MANAGE_KEY_SERVERS, P.CRYPTO_MANAGE_ENCRYPTION_POLICY))
    # the CA (its private key is sealed under the key provider: changing it is key management too)
    CA_SHOW = ("show CA", (P.SYSTEM_READ,))
    CA_EXPORT_ROOT = ("export CA root", (P.SYSTEM_READ,))
    CA_CRL = ("get CRL", (P.SYSTEM_READ,))
    CA_VERIFY_EK = ("verify EK certificates", (P.SYSTEM_READ,))
    CA_REISSUE_EK = ("reissue EK certificates", (P.CERTIFICATES_MANAGE, P.CRYPTO_MANAGE_KEYS))
    CA_IMPORT = ("import CA", (P.CERTIFICATES_MANAGE, P.CRYPTO_MANAGE_KEYS))
    CA_CSR = ("create CA CSR", (P.CERTIFICATES_MANAGE, P.CRYPTO_MANAGE_KEYS))
    CA_IMPORT_SIGNED = ("import signed CA", (P.CERTIFICATES_MANAGE, P.CRYPTO_MANAGE_KEYS))
    CA_REVOKE = ("revoke certificate", (P.CERTIFICATES_MANAGE, P.CRYPTO_MANAGE_KEYS))
    # the inventory
    LIST_USERS = ("list users", (P.SYSTEM_READ,))
    MANAGE_USERS = ("manage users and permissions", (P.MODIFY_PERMISSIONS,))
    GRANT = ("grant permission", (P.MODIFY_PERMISSIONS,))
    LIST_ROLES = ("list roles", (P.SYSTEM_READ,))
    ADD_ROLE = ("add role", (P.MODIFY_ROLES,))
    LIST_DATASTORES = ("list datastores", (P.SYSTEM_READ,))
    ADD_DATASTORE = ("add datastore", (P.DATASTORE_CONFIG,))
    LIST_HOSTS = ("list hosts", (P.SYSTEM_READ,))
    ADD_HOST = ("add host", (P.HOST_ADD,))
    # host attestation (vSphere 6.7: the management plane looks at each host's TPM quote and raises an
    # alarm; nothing is enforced): asking the hosts for quotes changes host state, reading the results does not
    ATTEST_HOSTS = ("attest hosts", (P.HOST_CONFIG_SETTINGS,))
    HOST_ATTESTATION = ("read host attestation", (P.SYSTEM_READ,))
    SECURITY_REPORT = ("read security report", (P.SYSTEM_READ,))
    # which TPM manufacturers (and, optionally, images) the view trusts: certificate management in vCenter
    CONFIGURE_HOST_ATTESTATION = ("configure host attestation", (P.CERTIFICATES_MANAGE,))
    READ_AUDIT = ("read audit log", (P.SYSTEM_READ,))
    # backup and restore
    BACKUP = ("back up", (P.DATASTORE_BROWSE, P.DATASTORE_FILES), (P.CRYPTO_ACCESS,))
    RESTORE = ("restore", (P.VM_REGISTER, P.DATASTORE_FILES), (P.CRYPTO_REGISTER_VM,))

    def __new__(cls, action: str, base: tuple[Privilege, ...], on_encrypted: tuple[Privilege, ...] = ()) -> "Operation":
        member = str.__new__(cls, action)
        member._value_ = action
        member.base = frozenset(base)
        member.on_encrypted = frozenset(on_encrypted)
        return member

    def required(self, encrypted: bool) -> frozenset[Privilege]:
        """The privileges the operation needs: its base set, plus the cryptographic ones on an encrypted VM."""
        return self.base | self.on_encrypted if encrypted else self.base


def required_privileges(operation: Operation, encrypted: bool) -> frozenset[Privilege]:
    """The privileges ``operation`` needs on a VM that is (or is not) encrypted."""
    return operation.required(encrypted)


def missing_privileges(held: frozenset[Privilege], operation: Operation, encrypted: bool) -> list[Privilege]:
    """The privileges ``operation`` needs that ``held`` lacks, in a stable order."""
    return sorted(operation.required(encrypted) - held, key=lambda p: p.value)
