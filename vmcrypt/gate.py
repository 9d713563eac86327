"""The one gate every operation of the management plane passes: check, act, audit the outcome.

``Gate.run(user, operation, target, act)`` looks up what ``operation`` needs on
``target`` (``vmcrypt.rbac.Operation`` declares it), refuses with
``PermissionDenied`` naming the missing privileges when the user lacks one, and
otherwise runs ``act``. Every outcome is written to the inventory's append-only
audit log: ``denied`` (nothing was done), ``failed`` (with the reason) or ``ok``,
in the same transaction (``Inventory.operation``) as what the operation changed
in the inventory: exactly one audit row per operation.

When the database gives up on that transaction for contention (a deadlock, a
serialization failure, SQLite's ``database is locked``) it is rolled back whole,
audit row included, and run again (``Inventory.attempt``: bounded, jittered
backoff) if the operation had not yet acted outside the database. Operations in
``DATABASE_ONLY`` only read files and write the inventory, so they are always run
again; every other operation is run again only when the failure came before its
action began (the privilege check, the VM's row lock). When it cannot be run
again, ``InventoryBusy`` (the service answers 503) names the cause and one
``failed`` row is audited for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from vmcrypt.errors import VmcryptError
from vmcrypt.inventory import DATABASE_ERRORS, ROOT, Inventory, InventoryBusy
from vmcrypt.rbac import Operation, Privilege, missing_privileges

T = TypeVar("T")


class PermissionDenied(VmcryptError):
    """The user lacks a privilege; ``missing`` lists which."""

    def __init__(self, user: str, operation: Operation, entity: str, missing: list[Privilege]) -> None:
        self.missing = missing
        self.operation = operation
        names = ", ".join(p.value for p in missing)
        super().__init__(f"'{user}' may not {operation.value} on {entity}: missing privilege {names}")


@dataclass(frozen=True)
class Target:
    """What an operation acts on: the inventory's root, a datastore or a VM (and whether it is encrypted)."""

    kind: str = ROOT[0]
    name: str = ROOT[1]
    encrypted: bool = False

    @property
    def entity(self) -> tuple[str, str]:
        """(kind, name): the key permissions are granted on."""
        return (self.kind, self.name)

    @property
    def label(self) -> str:
        """How the audit log names the target."""
        return f"{self.kind} {self.name}".strip()


INVENTORY_ROOT = Target()

# operations that change nothing but the inventory (they may read files): safe to run again whole
DATABASE_ONLY = frozenset({
    Operation.LIST_VMS, Operation.DESCRIBE_VM, Operation.UNREGISTER, Operation.CONSOLE, Operation.BROWSE,
    Operation.DOWNLOAD, Operation.LIST_USERS, Operation.MANAGE_USERS, Operation.GRANT, Operation.LIST_ROLES,
    Operation.ADD_ROLE, Operation.LIST_DATASTORES, Operation.LIST_HOSTS, Operation.ADD_HOST, Operation.READ_AUDIT,
})


def vm_target(name: str, encrypted: bool) -> Target:
    """A VM as a target; ``encrypted`` adds the Cryptographer privileges an operation needs."""
    return Target("vm", name, encrypted)


def datastore_target(name: str, encrypted: bool = False) -> Target:
    """A datastore as a target (creating a VM, registering one)."""
    return Target("datastore", name, encrypted)


class Gate:
    """The one place an operation is allowed or refused, and audited either way."""

    def __init__(self, inventory: Inventory) -> None:
        self.inventory = inventory

    def check(self, user: str, operation: Operation, target: Target) -> None:
        """Refuse (audited) when ``user`` lacks a privilege ``operation`` needs on ``target``."""
        missing = missing_privileges(self.inventory.privileges(user, target.entity), operation, target.encrypted)
        if missing:
            self.inventory.audit(user, operation.value, target.label, "denied",
                                 "missing " + ", ".join(p.value for p in missing))
            raise PermissionDenied(user, operation, target.label, missing)

    def run(self, user: str, operation: Operation, target: Target, act: Callable[[], T],
            detail: str | Callable[[], str] = "") -> T:
        """Run ``act`` if ``user`` holds what ``operation`` needs on ``target``; audit the outcome.

        ``detail`` may be a function, asked after the action succeeded (what it did)."""
        def once() -> T:
            self.check(user, operation, target)
            if operation not in DATABASE_ONLY:
                self.inventory.acting_outside()
            try:
                result = act()
            except DATABASE_ERRORS:
                raise  # the transaction is lost: rolled back whole by attempt(), which may run it again
            except Exception as exc:
                self.inventory.audit(user, operation.value, target.label, "failed", str(exc))
                raise
            self.inventory.audit(user, operation.value, target.label, "ok", detail() if callable(detail) else detail)
            return result
        return self.attempt(user, operation, target.label, once)

    def attempt(self, user: str, operation: Operation, label: str, body: Callable[[], T]) -> T:
        """``body`` as one transaction, run again on contention (``Inventory.attempt``); when it cannot be,
        one ``failed`` audit row names the cause (the rolled-back attempts left none)."""
        try:
            return self.inventory.attempt(body)
        except InventoryBusy as exc:
            self.inventory.audit(user, operation.value, label, "failed", str(exc))
            raise
