"""Many clients, one inventory: concurrent operations on shared VMs end in the state a serial run gives.

Two management service processes of one home share a real PostgreSQL inventory
(the same test on SQLite runs one process). Eight clients, each logged in as its
own user to one of the services, send 1,000 operations between them: create a
VM, power on, power off, encrypt, grant a permission; most land on six VMs that
every client shares, so operations on one VM collide all the time. One client
lacks the cryptographic privileges: its encrypts are refused.

What must hold afterwards:
- every operation is in the audit log exactly once, with the outcome its client
  saw, and each user's audit rows are in the order that user sent them;
- replaying the audit log in order through a model of the VMs (power state,
  encrypted, the viewer's permission on each VM) explains every outcome (a power
  on succeeds only on a powered-off VM, an encrypt only on a powered-off, plain
  one): the operations on a VM ran one at a time, none saw a stale state;
- the inventory at the end equals the model: no update was lost.
"""

from __future__ import annotations

import random
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from support.service import start_service
from vmcrypt.inventory import ROOT
from vmcrypt.management import Management
from vmcrypt.service_client import ServiceClient, ServiceError

CLIENTS = 8
OPERATIONS = 1000
SHARED_VMS = [f"shared{i}" for i in range(6)]
ROLES = ["Read-only", "No Cryptography Administrator", "Administrator"]
PASSWORD = "concurrency-pw-1"
MIX = [("create VM", 8), ("power on", 26), ("power off", 26), ("encrypt", 14), ("grant permission", 26)]


@dataclass
class Client:
    """One client's thread: its user, its service, and what it sent and saw, in order."""

    index: int
    url: str
    user: str
    log: list[tuple[str, str, str]] = field(default_factory=list)  # (action, entity, outcome)
    created: list[str] = field(default_factory=list)
    error: BaseException | None = None

    def run(self, count: int, start: threading.Barrier) -> None:
        rng = random.Random(1000 + self.index)
        try:
            with ServiceClient(self.url) as service:
                service.login(self.user, PASSWORD)
                start.wait()
                for number in range(count):
                    self._one(service, rng, number)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def _one(self, service: ServiceClient, rng: random.Random, number: int) -> None:
        action = rng.choices([a for a, _ in MIX], [w for _, w in MIX])[0]
        vm = rng.choice(SHARED_VMS if not self.created or rng.random() < 0.7 else self.created)
        if action == "create VM":
            name = f"c{self.index}-{number}"
            request, entity = ("POST", "/vms", {"datastore": "ds", "name": name, "firmware": "bios"}), "datastore ds"
        elif action == "grant permission":
            request = ("POST", "/permissions", {"entity_type": "vm", "entity": vm, "principal": "viewer",
                                                "role": rng.choice(ROLES)})
            entity = "root"
        else:
            path = {"power on": "power-on", "power off": "power-off", "encrypt": "encrypt"}[action]
            request, entity = ("POST", f"/vms/{vm}/{path}", {}), f"vm {vm}"
        method, path, body = request
        try:
            service.request(method, path, json=body)
            outcome = "ok"
        except ServiceError as exc:
            if exc.status >= 500:
                raise
            outcome = "denied" if exc.status == 403 else "failed"
        if action == "create VM" and outcome == "ok":
            self.created.append(name)
        self.log.append((action, entity, outcome))


def _prepare(home: Path, tmp_path: Path, db_url: str | None) -> None:
    """The inventory: an administrator per client (the last one without cryptographic privileges), a viewer,
    a datastore and the shared VMs; the key provider made once, before the services run."""
    m = Management(home, db_url=db_url)
    try:
        inv = m.inventory
        for i in range(CLIENTS):
            inv.add_user(f"c{i}", PASSWORD)
            inv.grant(ROOT, f"c{i}", "No Cryptography Administrator" if i == CLIENTS - 1 else "Administrator")
        inv.add_user("viewer", PASSWORD)
        inv.add_user("setup", PASSWORD)
        inv.grant(ROOT, "setup", "Administrator")
        inv.add_datastore("ds", tmp_path / "ds")
        admin = m.login("setup", PASSWORD)
        for name in SHARED_VMS:
            admin.create_vm("ds", name)
        admin.create_vm("ds", "warm-up")
        admin.encrypt("warm-up")  # the home's default key provider exists before two processes use it
    finally:
        m.close()


def _replay(audit: list, clients: list[Client]) -> tuple[dict[str, tuple[str, bool]], dict[str, str]]:
    """Run the audit log through the model; every outcome must be the one a serial run gives."""
    users = {c.user for c in clients}
    vms: dict[str, tuple[str, bool]] = {name: ("off", False) for name in SHARED_VMS}
    grants: dict[str, str] = {}
    for entry in audit:
        if entry.user not in users or entry.action == "login":
            continue
        if entry.action == "create VM":
            continue  # a created VM starts off and plain: the model meets it at its first operation
        if entry.action == "grant permission":
            if entry.outcome == "ok":
                role, vm = re.fullmatch(r"(.+) for viewer on vm (\S+)", entry.detail).groups()
                grants[vm] = role
            continue
        vm = entry.entity.removeprefix("vm ")
        power, encrypted = vms.setdefault(vm, ("off", False))
        if entry.action == "power on":
            expected = "ok" if power == "off" else "failed"
            power = "on" if expected == "ok" else power
        elif entry.action == "power off":
            expected = "ok" if power == "on" else "failed"
            power = "off" if expected == "ok" else power
        else:  # encrypt
            if entry.outcome == "denied":
                assert entry.user == f"c{CLIENTS - 1}", entry
                continue
            expected = "ok" if power == "off" and not encrypted else "failed"
            encrypted = encrypted or expected == "ok"
        assert entry.outcome == expected, f"{entry} does not follow from the VM's state {vms[vm]}: not serialized"
        vms[vm] = (power, encrypted)
    return vms, grants


def _concurrent_run(home: Path, tmp_path: Path, urls: list[str], db_url: str | None) -> float:
    clients = [Client(i, urls[i % len(urls)], f"c{i}") for i in range(CLIENTS)]
    start = threading.Barrier(CLIENTS)
    threads = [threading.Thread(target=c.run, args=(OPERATIONS // CLIENTS, start)) for c in clients]
    began = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    elapsed = time.monotonic() - began
    assert not any(t.is_alive() for t in threads), "a client hung"
    for c in clients:
        assert c.error is None, f"client {c.index}: {c.error!r}"
    assert sum(len(c.log) for c in clients) == OPERATIONS

    m = Management(home, create_inventory=False, db_url=db_url)
    try:
        audit = m.inventory.audit_log()
        records = {r.name: r for r in m.inventory.vms()}
        permissions = {entity: role for kind, entity, principal, _, role, _ in m.inventory.permissions()
                       if kind == "vm" and principal == "viewer"}
    finally:
        m.close()

    # every operation exactly once, in each user's order, with the outcome the client saw
    for c in clients:
        rows = [(e.action, e.entity, e.outcome) for e in audit if e.user == c.user and e.action != "login"]
        assert rows == c.log, f"{c.user}: the audit log differs from what the client did"
    outcomes = {o for c in clients for _, _, o in c.log}
    assert outcomes == {"ok", "failed", "denied"}  # the mix really collided and was really refused

    # the audit log, replayed, explains every outcome; the inventory equals the model
    model, grants = _replay(audit, clients)
    created = [name for c in clients for name in c.created]
    assert sorted(records) == sorted(SHARED_VMS + created + ["warm-up"])
    for name in SHARED_VMS + created:
        assert (records[name].power_state.value, records[name].encrypted) == model.get(name, ("off", False)), name
    assert permissions == grants
    return elapsed


@pytest.mark.slow
def test_two_services_on_one_postgresql(home: Path, tmp_path: Path, pg_url: str, vmcrypt_cli) -> None:
    init = vmcrypt_cli("inventory", "init", "--admin", "admin", "--db-url", pg_url,
                       env={"VMCRYPT_PASSWORD": PASSWORD})
    assert init.returncode == 0, init.stderr
    _prepare(home, tmp_path, None)  # the home now names its PostgreSQL inventory (inventory.url)
    sockets = [home / "run" / "a.sock", home / "run" / "b.sock"]
    services = [start_service(home, socket_path=path, log=tmp_path / f"service-{path.stem}.log") for path in sockets]
    try:
        elapsed = _concurrent_run(home, tmp_path, [s.url for s in services], None)
    finally:
        for service in services:
            service.stop()
    print(f"postgresql, 2 service processes: {OPERATIONS} operations in {elapsed:.1f} s")


@pytest.mark.slow
def test_one_service_on_sqlite(home: Path, tmp_path: Path) -> None:
    _prepare(home, tmp_path, None)
    with start_service(home) as service:
        elapsed = _concurrent_run(home, tmp_path, [service.url], None)
    print(f"sqlite, 1 service process: {OPERATIONS} operations in {elapsed:.1f} s")
