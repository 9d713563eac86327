"""One gate: every route of the management service and every CLI subcommand declares its operation;
the gate refuses, audits (denials too) and only then acts; power states change by the table only.

Inputs tried for refusal: a No Cryptography Administrator on every key provider and CA route that changes
or reveals keys (403 naming the privilege, audited, files unchanged), no token, a made-up token, an
expired one, a logged-out one, a malformed body, each illegal power transition.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
from pathlib import Path

import sqlalchemy as sa

import pytest
from starlette.routing import Route
from starlette.testclient import TestClient

from support.files import snapshot
from vmcrypt.cli import build_parser
from vmcrypt.gate import INVENTORY_ROOT, PermissionDenied
from vmcrypt.inventory import ROOT, Inventory, InventoryBusy
from vmcrypt.inventory_schema import sessions as sessions_table
from vmcrypt.management import Management
from vmcrypt.power import TRANSITIONS, PowerEvent, PowerState, PowerStateError
from vmcrypt.rbac import Operation, Privilege
from vmcrypt.service_app import PUBLIC_ROUTES, ROUTES, build_app, error_response

# the local administrator's, on the files themselves; `host ...` is the host's own process, not the management plane
LOCAL_ONLY_COMMANDS = {"server", "inventory init", "inventory move-to", "host run", "host describe"}
# `vmcrypt trust ...` acts on a Trust Authority (or the workload home's trust files), not through the
# management plane: its own gate is TrustedAdmins membership (vmcrypt.trust.authority.TrustAuthority.admin)
TRUST_PREFIX = "trust "


@pytest.fixture(scope="module")
def app_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("gate") / "home"
    m = Management(home)
    m.bootstrap("admin", "admin-pw")
    admin = m.login("admin", "admin-pw")
    admin.add_user("mallory", "mallory-pw", "No Cryptography Administrator")
    admin.add_datastore("ds1", home.parent / "ds1")
    admin.create_vm("ds1", "vm1")
    m.keys.provider().create_key()
    m.close()
    return home


@pytest.fixture(scope="module")
def client(app_home: Path):
    app = build_app(app_home)
    with TestClient(app) as test_client:
        yield test_client
    app.state.worker.close()


def _login(client: TestClient, user: str, password: str) -> dict[str, str]:
    response = client.post("/session", json={"user": user, "password": password})
    assert response.status_code == 200, response.text
    return {"Authorization": f"Bearer {response.json()['token']}"}


# ----------------------------------------------------------------------------- declared once


def test_every_route_declares_one_operation() -> None:
    app = build_app("/nonexistent-home")
    undeclared, seen = [], {}
    for route in app.routes:
        assert isinstance(route, Route)
        for method in route.methods - {"HEAD"}:
            if (method, route.path) in PUBLIC_ROUTES:
                continue
            operation = getattr(route.endpoint, "operation", None)
            if not isinstance(operation, Operation):
                undeclared.append(f"{method} {route.path}")
            seen[(method, route.path)] = operation
    app.state.worker.close()
    assert not undeclared, f"routes without an operation: {undeclared}"
    assert len(seen) == len(ROUTES)  # no route twice
    served = {operation for operation in seen.values()}
    assert served == set(Operation), f"operations no route serves: {sorted(o.name for o in set(Operation) - served)}"


def _leaves(parser: argparse.ArgumentParser, prefix: str = ""):
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subparsers:
        yield prefix.strip(), parser
        return
    for action in subparsers:
        for name, sub in action.choices.items():
            yield from _leaves(sub, f"{prefix} {name}")


def test_every_cli_subcommand_declares_its_operation() -> None:
    leaves = dict(_leaves(build_parser()))
    assert {"provider export", "ca import", "vm power-on", "inventory audit", "server"} <= set(leaves)
    undeclared = [name for name, sub in leaves.items()
                  if name not in LOCAL_ONLY_COMMANDS and not name.startswith(TRUST_PREFIX)
                  and not isinstance(sub.get_default("operation"), Operation)]
    assert not undeclared, f"subcommands without an operation: {undeclared}"
    assert all(leaves[name].get_default("operation") is None for name in LOCAL_ONLY_COMMANDS)
    trust = [name for name in leaves if name.startswith(TRUST_PREFIX)]
    assert "trust import-hosts" in trust and all(leaves[name].get_default("operation") is None for name in trust)


def test_every_operation_names_vsphere_privileges() -> None:
    for operation in Operation:
        assert operation.base <= set(Privilege) and operation.on_encrypted <= set(Privilege)
        assert Operation(operation.value) is operation  # one audit name per operation
    assert Operation.EXPORT_KEYS.base == {Privilege.CRYPTO_MANAGE_KEYS}
    assert Privilege.CRYPTO_MANAGE_KEY_SERVERS in Operation.ADD_KMIP_PROVIDER.base
    assert Privilege.CRYPTO_MANAGE_ENCRYPTION_POLICY in Operation.SET_DEFAULT_PROVIDER.base
    assert Privilege.CERTIFICATES_MANAGE in Operation.CA_IMPORT.base


# ----------------------------------------------------------------------------- the gate


def test_the_gate_audits_denials_failures_and_successes(tmp_path: Path) -> None:
    m = Management(tmp_path / "home")
    m.bootstrap("admin", "pw")
    m.login("admin", "pw").add_user("mallory", "pw2", "No Cryptography Administrator")
    acted = []
    with pytest.raises(PermissionDenied, match="missing privilege Cryptographer.ManageKeys") as refused:
        m.gate.run("mallory", Operation.EXPORT_KEYS, INVENTORY_ROOT, lambda: acted.append("exported"))
    assert refused.value.missing == [Privilege.CRYPTO_MANAGE_KEYS] and acted == []
    with pytest.raises(ValueError):
        m.gate.run("admin", Operation.EXPORT_KEYS, INVENTORY_ROOT, lambda: int("x"))
    assert m.gate.run("admin", Operation.ADD_HOST, INVENTORY_ROOT, lambda: "done", detail="esx1") == "done"
    log = [(e.user, e.action, e.entity, e.outcome) for e in m.inventory.audit_log()[-3:]]
    assert log == [("mallory", "export keys", "root", "denied"), ("admin", "export keys", "root", "failed"),
                   ("admin", "add host", "root", "ok")]
    m.close()


# (method, path, body) a No Cryptography Administrator tries -> the privilege the refusal names
CRYPTO_ROUTES = [
    ("POST", "/providers/export", {"passphrase": "x"}, "Cryptographer.ManageKeys"),
    ("POST", "/providers/import", {"backup": base64.b64encode(b"x").decode(), "passphrase": "x"},
     "Cryptographer.ManageKeys"),
    ("GET", "/providers/keys", None, "Cryptographer.ManageKeys"),
    ("POST", "/providers/native", {"name": "evil"}, "Cryptographer.ManageKeyServers"),
    ("POST", "/providers/kmip", {"name": "evil", "servers": ["127.0.0.1:5696"], "ca": "", "cert": "", "key": ""},
     "Cryptographer.ManageKeyServers"),
    ("POST", "/providers/default/test", None, "Cryptographer.ManageKeyServers"),
    ("POST", "/providers/default/default", None, "Cryptographer.ManageEncryptionPolicy"),
    ("POST", "/ca/import", {"cert": ""}, "Cryptographer.ManageKeys"),
    ("POST", "/ca/revoke", {"serial": "1"}, "Cryptographer.ManageKeys"),
    ("POST", "/ca/reissue-ek", {"all": True}, "Cryptographer.ManageKeys"),
    ("POST", "/ca/csr", {"cn": "evil"}, "Cryptographer.ManageKeys"),
    ("POST", "/ca/import-signed", {"chain": ""}, "Cryptographer.ManageKeys"),
    ("POST", "/vms/vm1/encrypt", None, "Cryptographer.Encrypt"),
    ("POST", "/vms/vm1/vtpm", None, "Cryptographer.Encrypt"),
]


@pytest.mark.parametrize(("method", "path", "body", "privilege"), CRYPTO_ROUTES,
                         ids=[f"{m} {p}" for m, p, _, _ in CRYPTO_ROUTES])
def test_no_cryptography_administrator_is_refused(client: TestClient, app_home: Path, method: str, path: str,
                                                  body: dict | None, privilege: str) -> None:
    headers = _login(client, "mallory", "mallory-pw")
    before = snapshot(app_home)
    response = client.request(method, path, json=body, headers=headers)
    assert response.status_code == 403, response.text
    assert privilege in response.json()["privilege"] and privilege in response.json()["error"]
    after = snapshot(app_home)
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    assert {name for name in changed if not name.startswith("inventory.db")} == set()  # only the audit log grew
    audit = client.get("/audit", headers=_login(client, "admin", "admin-pw")).json()
    last = [e for e in audit if e["user"] == "mallory"][-1]
    assert last["outcome"] == "denied" and privilege in last["detail"]


def test_sessions_and_errors(client: TestClient) -> None:
    assert client.get("/vms").status_code == 401
    assert client.get("/vms", headers={"Authorization": "Bearer made-up"}).status_code == 401
    assert client.post("/session", json={"user": "mallory", "password": "wrong"}).status_code == 401
    assert client.post("/session", json=["not", "an", "object"]).status_code == 422
    headers = _login(client, "admin", "admin-pw")
    assert client.post("/vms/vm1/clone", json={"new_name": 5}, headers=headers).status_code == 422
    assert client.post("/vms/nothere/power-on", headers=headers).status_code == 404
    assert client.post("/vms/vm1/power-off", headers=headers).json()["error"].endswith("already powered off")
    assert client.delete("/session", headers=headers).status_code == 200
    assert client.get("/vms", headers=headers).status_code == 401


def test_session_tokens_expire_and_are_kept_as_digests(tmp_path: Path) -> None:
    with Inventory(tmp_path / "home") as inv:
        token, _ = inv.open_session("admin", datetime.timedelta(seconds=-1))
        assert inv.session_user(token) is None  # expired at once, and purged
        token, expires = inv.open_session("admin", datetime.timedelta(minutes=15))
        assert inv.session_user(token) == "admin" and inv.session_user(token + "x") is None
        assert expires > datetime.datetime.now(datetime.timezone.utc)
        with inv.operation() as conn:
            rows = conn.execute(sa.select(sessions_table)).all()
        assert [(bytes(r.digest), r.user) for r in rows] == [(hashlib.sha256(token.encode()).digest(), "admin")]
        assert token.encode() not in repr(rows).encode()
        assert inv.close_session(token) and inv.session_user(token) is None and not inv.close_session(token)
        inv.open_session("admin", datetime.timedelta(seconds=-1))  # never looked up again: the next login purges it
        inv.open_session("other", datetime.timedelta(minutes=1))
        with inv.operation() as conn:
            assert conn.execute(sa.select(sessions_table.c.user)).scalars().all() == ["other"]


def test_database_contention_is_a_503_that_names_the_cause() -> None:
    response = error_response(InventoryBusy("deadlock detected", 5, False))
    assert response.status_code == 503 and b"deadlock detected" in response.body and b"5 attempts" in response.body


# ----------------------------------------------------------------------------- power states


def test_power_state_transition_table() -> None:
    allowed = {(PowerState.OFF, PowerEvent.POWER_ON): PowerState.ON, (PowerState.ON, PowerEvent.POWER_OFF): PowerState.OFF,
               (PowerState.ON, PowerEvent.SUSPEND): PowerState.SUSPENDED,
               (PowerState.SUSPENDED, PowerEvent.RESUME): PowerState.ON,
               (PowerState.SUSPENDED, PowerEvent.POWER_OFF): PowerState.OFF}
    assert TRANSITIONS == allowed
    for state in PowerState:
        for event in PowerEvent:
            if (state, event) in allowed:
                assert state.after(event) is allowed[(state, event)]
            else:
                with pytest.raises(PowerStateError) as refused:
                    state.after(event)
                assert refused.value.state is state and refused.value.event is event
                assert str(refused.value)
    with pytest.raises(PowerStateError, match="already powered on"):
        PowerState.ON.after(PowerEvent.POWER_ON)
    with pytest.raises(PowerStateError, match="resume it"):
        PowerState.SUSPENDED.after(PowerEvent.POWER_ON)
    assert PowerState("on") is PowerState.ON and ROOT == INVENTORY_ROOT.entity
