"""The management service's HTTP API (a Starlette app): one route, one gate operation.

``build_app(home)`` serves a management home. ``POST /session`` with a user and
password gives a short-lived random token (kept in the inventory as a digest,
so every service process of one inventory accepts it; compared with
``hmac.compare_digest``, expiring, ended everywhere by ``DELETE /session``);
every other route needs ``Authorization: Bearer TOKEN``. Each route is declared
in ``ROUTES`` with the ``Operation`` it runs; its handler calls the one
``UserSession`` method that passes the gate. JSON in and out; errors are
``{"error": ..., "privilege": ...}`` with 401 (no or bad session), 403 (a
privilege is missing), 404 (no such object), 409 (refused in this state), 422
(a malformed request) or 503 (the database gave up for contention and the
operation could not be run again; nothing was changed). The handlers run one at
a time on one worker thread, which owns the inventory's database connections
(several service processes may share one PostgreSQL inventory: see
``vmcrypt.inventory``).
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import contextlib
import datetime
import json
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from certs.ca import CaError
from vmcrypt.admin_operations import ek_rows, scratch_file
from vmcrypt import web
from vmcrypt.errors import VmcryptError
from vmcrypt.gate import PermissionDenied, datastore_target
from vmcrypt.inventory import DATABASE_ERRORS, Inventory, InventoryBusy, InventoryError
from vmcrypt.keys import KeyManager
from vmcrypt.management import Management, UserSession
from vmcrypt.rbac import Operation
from vmcrypt.results import audit_rows, created_row, manifest_row, operation_row, vm_row
from vmcrypt.vm import VmHome, VmSpec

SESSION_LIFETIME = datetime.timedelta(minutes=15)
PUBLIC_ROUTES = {("POST", "/session"), ("DELETE", "/session"), ("GET", "/health"),
                 ("GET", "/login"), ("POST", "/login"), ("POST", "/logout")}
BINARY = "application/octet-stream"
MIN_VTPM_PORT, MAX_VTPM_PORT = 1024, 65534  # a vTPM takes port and port + 1; no privileged ports


class RequestError(ValueError):
    """The request itself is malformed (a missing or mistyped field): 422."""


@dataclass
class Call:
    """What a handler gets from the request: path parameters, query and body."""

    path: dict[str, str]
    query: dict[str, str]
    body: Any = None

    def field(self, name: str, kind: type | tuple[type, ...] = str, default: Any = ...) -> Any:
        """A field of the JSON body, of type ``kind``; ``default`` when absent (required when not given)."""
        if not isinstance(self.body, dict) or name not in self.body:
            if default is ...:
                raise RequestError(f"the request needs '{name}'")
            return default
        value, kinds = self.body[name], kind if isinstance(kind, tuple) else (kind,)
        if value is None and type(None) in kinds:
            return None
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            raise RequestError(f"'{name}' has the wrong type ({type(value).__name__})")
        return value

    def blob(self, name: str, optional: bool = False) -> bytes | None:
        """A base64 field of the JSON body."""
        value = self.field(name, (str, type(None)), None if optional else ...)
        if value is None:
            return None
        try:
            return base64.b64decode(value, validate=True)
        except ValueError:
            raise RequestError(f"'{name}' is not base64") from None

    def flag(self, name: str) -> bool:
        """Whether query parameter ``name`` is 1, true or yes (in any case); an absent one is False."""
        return self.query.get(name, "").lower() in ("1", "true", "yes")


@dataclass
class Binary:
    """A handler's answer sent as raw bytes, with its media type and extra headers, instead of JSON."""

    data: bytes
    media_type: str = BINARY
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class TempFile:
    """A file the service made for this answer (a backup archive): sent, then removed."""

    path: Path
    headers: dict[str, str] = field(default_factory=dict)


Handler = Callable[[UserSession, Call], Any]


@dataclass(frozen=True)
class ApiRoute:
    """One route of the REST API: method and path, the operation whose privileges it needs, its handler, how the request
    body is read and, for a browser, its HTML view."""

    method: str
    path: str
    operation: Operation
    handler: Handler
    body: str = "json"  # "json", "bytes" (the raw body, streamed to a scratch file) or "none"
    page: str | None = None  # a GET with an HTML view: this template, for browsers (session cookie accepted)


# ----------------------------------------------------------------------------- handlers


def _create(s: UserSession, c: Call) -> dict:
    path = c.field("path", (str, type(None)), None)
    if path is not None:
        directory = Path(path)
        datastore, name = s.datastore_of(directory.parent), directory.name
        if s.inventory.datastore_path(datastore) != directory.parent.resolve():
            raise InventoryError(f"a VM is created directly in a datastore's directory, not in {directory.parent}")
    else:
        datastore, name = c.field("datastore"), c.field("name")
    spec = VmSpec(name=c.field("vm_name", str, name), hw_version=c.field("hw_version", int, 14),
                  firmware=c.field("firmware", str, "efi"), memory_mb=c.field("memory", int, 2048),
                  cpus=c.field("cpus", int, 2), disk_bytes=c.field("disk_bytes", int, 0))
    record = s.create_vm(datastore, name, spec)
    return created_row(VmHome(record.vmx_path))


def _crypt(operation: Operation) -> Handler:
    def handler(s: UserSession, c: Call) -> dict:
        record, result = s.crypt(operation, c.path["name"], provider=c.field("provider", (str, type(None)), None),
                                 include_disks=c.field("disks", bool, False), deep=c.field("deep", bool, False))
        return operation_row(result, VmHome(record.vmx_path))
    return handler


def _power_on(accept_rollback: bool) -> Handler:
    """Power on with the vTPM endpoints the library's ``power_on`` takes: ``port`` (the TCP data port,
    control on port + 1), ``data_unix: true`` (also a Unix data socket) and ``host`` (the destination:
    for a VM on a trusted key provider, a host its Trust Authority attested). The service picks the
    socket's path itself, one per VM in its own directory, and answers it as ``vtpm_data_unix``: it runs
    as root and the host replaces whatever stands at a socket path, so a caller never names one."""
    def handler(s: UserSession, c: Call) -> dict:
        port = c.field("port", (int, type(None)), None)
        if port is not None and not MIN_VTPM_PORT <= port <= MAX_VTPM_PORT:
            raise RequestError(f"'port' must be between {MIN_VTPM_PORT} and {MAX_VTPM_PORT} (control on port + 1)")
        data_unix = s.m.supervisor.data_socket(c.path["name"]) if c.field("data_unix", bool, False) else None
        host = c.field("host", (str, type(None)), None)
        record = s.power_on(c.path["name"], accept_rollback=accept_rollback, port=port, data_unix=data_unix,
                            host=host)
        return {**vm_row(record), "vtpm_data_unix": None if data_unix is None or not record.vtpm else str(data_unix)}
    return handler


def _add_vtpm(s: UserSession, c: Call) -> dict:
    record, eks = s.provision_vtpm(c.path["name"])
    return {"vm": record.name, "eks": ek_rows(eks)}


def _backup(s: UserSession, c: Call) -> TempFile:
    archive = s.scratch_path().with_suffix(".tar")
    try:
        manifest = s.backup(c.path["name"], archive, include_disks=not c.field("no_disks", bool, False))
    except BaseException:
        archive.unlink(missing_ok=True)
        raise
    total = sum(e.size for e in manifest.files)
    summary = json.dumps({**manifest_row(manifest), "bytes": total})
    return TempFile(archive, {"X-Vmcrypt-Manifest": base64.b64encode(summary.encode()).decode()})


def _restore(s: UserSession, c: Call) -> dict:
    return vm_row(s.restore(c.body, c.query.get("datastore") or _missing("datastore")))


def _missing(name: str) -> str:
    raise RequestError(f"the request needs '{name}'")


def _migrate_away(s: UserSession, c: Call) -> dict:
    to_home = c.field("to_home")
    target = Management(to_home, create_inventory=False).login(c.field("to_user"), c.field("to_password"))
    try:
        return vm_row(s.migrate_to_home(c.path["name"], target, c.field("datastore")))
    finally:
        target.m.close()


def _export(s: UserSession, c: Call) -> Binary:
    blob, what = s.export_keys(c.field("passphrase").encode(), c.field("provider", (str, type(None)), None))
    return Binary(blob, headers={"X-Vmcrypt-Keys": str(what["keys"]), "X-Vmcrypt-Provider": what["provider"]})


def _names(values: list) -> list[str]:
    if not all(isinstance(v, str) and v for v in values):
        raise RequestError("'hosts' must be a list of host names")
    return values


def _strings(c: Call, name: str) -> list[str]:
    values = c.field(name, list, [])
    if not all(isinstance(v, str) for v in values):
        raise RequestError(f"'{name}' must be a list of strings")
    return values


def _text(data: bytes) -> Binary:
    return Binary(data, "application/x-pem-file")


ROUTES: list[ApiRoute] = [
    # VMs
    ApiRoute("GET", "/vms", Operation.LIST_VMS, lambda s, c: [vm_row(r) for r in s.vms(c.query.get("path"))]),
    ApiRoute("POST", "/vms", Operation.CREATE_VM, _create),
    ApiRoute("POST", "/vms/register", Operation.REGISTER,
             lambda s, c: vm_row(s.register_vm(c.field("path"), c.field("datastore")))),
    ApiRoute("GET", "/vms/{name}", Operation.DESCRIBE_VM, lambda s, c: s.describe(c.path["name"])),
    ApiRoute("DELETE", "/vms/{name}", Operation.DELETE,
             lambda s, c: s.delete_vm(c.path["name"]) or {"deleted": c.path["name"], "key_destroyed": False}),
    ApiRoute("POST", "/vms/{name}/delete-with-key", Operation.DELETE_WITH_KEY,
             lambda s, c: s.delete_vm(c.path["name"], destroy_key=True) or {"deleted": c.path["name"],
                                                                             "key_destroyed": True}),
    ApiRoute("POST", "/vms/{name}/unregister", Operation.UNREGISTER,
             lambda s, c: s.unregister_vm(c.path["name"]) or {"unregistered": c.path["name"]}),
    ApiRoute("POST", "/vms/{name}/power-on", Operation.POWER_ON, _power_on(accept_rollback=False)),
    ApiRoute("POST", "/vms/{name}/power-on-accepting-rollback", Operation.POWER_ON_ACCEPT_ROLLBACK,
             _power_on(accept_rollback=True)),
    ApiRoute("POST", "/vms/{name}/power-off", Operation.POWER_OFF, lambda s, c: vm_row(s.power_off(c.path["name"]))),
    ApiRoute("POST", "/vms/{name}/suspend", Operation.SUSPEND, lambda s, c: vm_row(s.suspend(c.path["name"]))),
    ApiRoute("POST", "/vms/{name}/resume", Operation.RESUME, lambda s, c: vm_row(s.resume(c.path["name"], host=c.field("host", (str, type(None)), None)))),
    ApiRoute("POST", "/vms/{name}/accept-rollback", Operation.ACCEPT_ROLLBACK,
             lambda s, c: {"vm": c.path["name"], "nvram_generation": s.accept_rollback(c.path["name"])}),
    ApiRoute("POST", "/vms/{name}/clone", Operation.CLONE,
             lambda s, c: vm_row(s.clone(c.path["name"], c.field("new_name"), host=c.field("host", (str, type(None)), None)))),
    ApiRoute("POST", "/vms/{name}/clone-exact", Operation.CLONE_EXACT,
             lambda s, c: vm_row(s.clone(c.path["name"], c.field("new_name"), exact=True, host=c.field("host", (str, type(None)), None)))),
    ApiRoute("POST", "/vms/{name}/migrate", Operation.MIGRATE,
             lambda s, c: vm_row(s.migrate(c.path["name"], c.field("datastore"), host=c.field("host", (str, type(None)), None)))),
    ApiRoute("POST", "/vms/{name}/migrate-away", Operation.MIGRATE_AWAY, _migrate_away),
    ApiRoute("POST", "/vms/{name}/snapshot", Operation.SNAPSHOT, lambda s, c: (lambda snap: {
        "vm": c.path["name"], "snapshot": snap.number, "file": str(snap.path)})(s.snapshot(c.path["name"]))),
    ApiRoute("POST", "/vms/{name}/revert", Operation.REVERT, lambda s, c: {
        "vm": c.path["name"], "snapshot": s.revert(c.path["name"], c.field("number", (int, type(None)), None)).number}),
    ApiRoute("POST", "/vms/{name}/console", Operation.CONSOLE,
             lambda s, c: {"vm": c.path["name"], "ticket": s.open_console(c.path["name"])}),
    ApiRoute("GET", "/vms/{name}/files", Operation.BROWSE, lambda s, c: s.browse(c.path["name"])),
    ApiRoute("GET", "/vms/{name}/files/{file}", Operation.DOWNLOAD,
             lambda s, c: Binary(s.download(c.path["name"], c.path["file"])), body="none"),
    ApiRoute("POST", "/vms/{name}/encrypt", Operation.ENCRYPT, _crypt(Operation.ENCRYPT)),
    ApiRoute("POST", "/vms/{name}/decrypt", Operation.DECRYPT, _crypt(Operation.DECRYPT)),
    ApiRoute("POST", "/vms/{name}/rekey", Operation.REKEY, _crypt(Operation.REKEY)),
    ApiRoute("POST", "/vms/{name}/vtpm", Operation.ADD_VTPM, _add_vtpm),
    ApiRoute("DELETE", "/vms/{name}/vtpm", Operation.REMOVE_VTPM, lambda s, c: vm_row(s.remove_vtpm(c.path["name"]))),
    ApiRoute("POST", "/vms/{name}/backup", Operation.BACKUP, _backup),
    ApiRoute("POST", "/restore", Operation.RESTORE, _restore, body="bytes"),
    # key providers
    ApiRoute("GET", "/providers", Operation.LIST_PROVIDERS, lambda s, c: s.providers()),
    ApiRoute("GET", "/providers/keys", Operation.LIST_KEYS, lambda s, c: s.provider_keys(c.query.get("provider"))),
    ApiRoute("POST", "/providers/native", Operation.ADD_NATIVE_PROVIDER,
             lambda s, c: s.add_native_provider(c.field("name"), default=c.field("default", bool, False))),
    ApiRoute("POST", "/providers/kmip", Operation.ADD_KMIP_PROVIDER, lambda s, c: s.add_kmip_provider(
        c.field("name"), c.field("servers", list), c.blob("ca"), c.blob("cert"), c.blob("key"),
        timeout=float(c.field("timeout", (int, float), 2.0)), cache_seconds=float(c.field("cache_seconds", (int, float), 300)),
        default=c.field("default", bool, False), provider_id=c.field("id", (str, type(None)), None))),
    ApiRoute("POST", "/providers/export", Operation.EXPORT_KEYS, _export),
    ApiRoute("POST", "/providers/import", Operation.IMPORT_KEYS, lambda s, c: s.import_keys(
        c.blob("backup"), c.field("passphrase").encode(), c.field("provider", (str, type(None)), None))),
    ApiRoute("POST", "/providers/{provider}/test", Operation.TEST_PROVIDER,
             lambda s, c: s.test_provider(c.path["provider"])),
    ApiRoute("POST", "/providers/{provider}/default", Operation.SET_DEFAULT_PROVIDER,
             lambda s, c: s.set_default_provider(c.path["provider"])),
    # the CA
    ApiRoute("GET", "/ca", Operation.CA_SHOW, lambda s, c: s.ca_show()),
    ApiRoute("GET", "/ca/root", Operation.CA_EXPORT_ROOT, lambda s, c: _text(s.ca_export_root(c.flag("chain")))),
    ApiRoute("GET", "/ca/crl", Operation.CA_CRL, lambda s, c: _text(s.ca_crl())),
    ApiRoute("POST", "/ca/verify-ek", Operation.CA_VERIFY_EK,
             lambda s, c: {"vm": c.field("vm"), "certificates": s.ca_verify_ek(c.field("vm"))}),
    ApiRoute("POST", "/ca/reissue-ek", Operation.CA_REISSUE_EK,
             lambda s, c: s.ca_reissue_ek(c.field("vms", list, []), c.field("all", bool, False))),
    ApiRoute("POST", "/ca/import", Operation.CA_IMPORT,
             lambda s, c: s.ca_import(c.blob("cert"), c.blob("key", True), c.blob("password", True))),
    ApiRoute("POST", "/ca/csr", Operation.CA_CSR, lambda s, c: _text(s.ca_csr(c.field("cn")))),
    ApiRoute("POST", "/ca/import-signed", Operation.CA_IMPORT_SIGNED,
             lambda s, c: s.ca_import_signed(c.blob("chain"))),
    ApiRoute("POST", "/ca/revoke", Operation.CA_REVOKE, lambda s, c: s.ca_revoke(c.field("serial"))),
    # the inventory
    ApiRoute("GET", "/users", Operation.LIST_USERS, lambda s, c: s.users()),
    ApiRoute("POST", "/users", Operation.MANAGE_USERS, lambda s, c: s.add_user(
        c.field("name"), c.field("password"), c.field("role", (str, type(None)), None)) or {
        "user": c.field("name"), "role": c.field("role", (str, type(None)), None)}),
    ApiRoute("GET", "/roles", Operation.LIST_ROLES, lambda s, c: s.roles()),
    ApiRoute("POST", "/roles", Operation.ADD_ROLE,
             lambda s, c: s.add_role(c.field("name"), c.field("privileges", list)) or {"role": c.field("name")}),
    ApiRoute("POST", "/permissions", Operation.GRANT, lambda s, c: s.grant(
        (c.field("entity_type"), c.field("entity", str, "")), c.field("principal"), c.field("role"),
        group=c.field("group", bool, False)) or {"granted": c.field("role"), "to": c.field("principal")}),
    ApiRoute("GET", "/datastores", Operation.LIST_DATASTORES, lambda s, c: s.datastores()),
    ApiRoute("POST", "/datastores", Operation.ADD_DATASTORE, lambda s, c: s.add_datastore(
        c.field("name"), c.field("path")) or {"datastore": c.field("name"), "path": str(Path(c.field("path")).resolve())}),
    ApiRoute("GET", "/hosts", Operation.LIST_HOSTS, lambda s, c: s.hosts()),
    ApiRoute("POST", "/hosts", Operation.ADD_HOST, lambda s, c: s.add_host(c.field("name")) or {"host": c.field("name")}),
    ApiRoute("GET", "/audit", Operation.READ_AUDIT, lambda s, c: audit_rows(s.audit_log())),
    # host attestation (look, don't enforce) and the security report
    ApiRoute("POST", "/hosts/attest", Operation.ATTEST_HOSTS,
             lambda s, c: s.attest_hosts(_names(c.field("hosts", list, [])))),
    ApiRoute("GET", "/hosts/attestation", Operation.HOST_ATTESTATION, lambda s, c: s.host_attestation()),
    ApiRoute("POST", "/hosts/attestation/settings", Operation.CONFIGURE_HOST_ATTESTATION,
             lambda s, c: s.configure_host_attestation([b.encode() for b in _strings(c, "manufacturer_cas")],
                                                       _strings(c, "images"))),
    ApiRoute("GET", "/security-report", Operation.SECURITY_REPORT, lambda s, c: s.security_report(),
             body="none", page="security_report.html"),
]


# ----------------------------------------------------------------------------- sessions


class SessionStore:
    """Bearer tokens kept in the inventory (``Inventory.open_session``: a SHA-256 digest of a 256-bit random
    token, with user, creation, expiry and last use), so a token from one service process works on every
    other of the same inventory and a logout anywhere ends it everywhere. Runs on the worker's thread."""

    def __init__(self, worker: "Worker", lifetime: datetime.timedelta = SESSION_LIFETIME) -> None:
        self.worker = worker
        self.lifetime = lifetime.total_seconds()
        self._lifetime = lifetime

    async def open(self, user: str) -> tuple[str, float]:
        """A new session for ``user``: its bearer token and when it expires (UNIX time)."""
        token, expires = await self.worker.sessions(lambda inv: inv.open_session(user, self._lifetime))
        return token, expires.timestamp()

    async def user(self, token: str) -> str | None:
        """The user of a live session, or None (also for an empty token)."""
        return await self.worker.sessions(lambda inv: inv.session_user(token)) if token else None

    async def close(self, token: str) -> bool:
        """End the session for every service process; whether there was one."""
        return await self.worker.sessions(lambda inv: inv.close_session(token)) if token else False


# ----------------------------------------------------------------------------- the app


class Worker:
    """One thread on which every request acts, each on the management home opened afresh (as a command line
    run would): the inventory is checked at every open, so a damaged one is refused saying why, and its
    database connection lives and dies on this thread (PostgreSQL's returns to the process's pool). Session
    look-ups, one per request, use one connection kept open on the same thread instead."""

    def __init__(self, home: Path, keys: KeyManager | None = None) -> None:
        self.home = home
        self.keys = keys
        self.executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="vmcrypt-gate")
        self._sessions: Inventory | None = None  # one connection for session look-ups, kept on this thread

    def _session_call(self, function: Callable[[Inventory], Any]) -> Any:
        """``function`` on the kept session connection; a connection the database dropped is opened afresh once."""
        for last in (False, True):
            if self._sessions is None:
                self._sessions = Inventory(self.home, create=False)
            try:
                return function(self._sessions)
            except DATABASE_ERRORS:
                self._close_sessions()
                if last:
                    raise
        raise AssertionError("unreachable")

    def _close_sessions(self) -> None:
        if self._sessions is not None:
            with contextlib.suppress(*DATABASE_ERRORS):
                self._sessions.close()
            self._sessions = None

    async def sessions(self, function: Callable[[Inventory], Any]) -> Any:
        """``function`` on the kept session connection, run on the worker's thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._session_call, function)

    def _call(self, function: Callable[[Management], Any]) -> Any:
        management = Management(self.home, create_inventory=False, keys=self.keys)
        try:
            return function(management)
        finally:
            management.close()

    async def run(self, function: Callable[[Management], Any]) -> Any:
        """``function`` on the management home opened afresh, run on the worker's thread; closed afterwards."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, self._call, function)

    def close(self) -> None:
        """Close the session connection on the worker's thread, then stop the thread once queued calls are done."""
        self.executor.submit(self._close_sessions).result()
        self.executor.shutdown()


def _json(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")


def error_response(exc: BaseException) -> Response:
    """The JSON error for an exception: its status, message and, for a refusal, the missing privilege."""
    if isinstance(exc, PermissionDenied):
        return _json({"error": str(exc), "privilege": ", ".join(p.value for p in exc.missing)}, 403)
    if isinstance(exc, RequestError):
        return _json({"error": str(exc), "privilege": None}, 422)
    if isinstance(exc, InventoryBusy):  # contention: nothing was committed, the client may try again
        return _json({"error": str(exc), "privilege": None}, 503)
    if isinstance(exc, InventoryError) and str(exc).startswith("no "):
        return _json({"error": str(exc), "privilege": None}, 404)
    if isinstance(exc, (VmcryptError, CaError, OSError, ValueError)):
        message = str(exc)
        if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
            message += f": {exc.filename}"
        return _json({"error": message, "privilege": None}, 409)
    return _json({"error": f"internal error ({type(exc).__name__})", "privilege": None}, 500)


def _bearer(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else ""


async def _body(request: Request, kind: str, worker: Worker) -> Any:
    if kind == "none":
        return None
    if kind == "bytes":  # streamed to a private scratch file under the home
        path = scratch_file(worker.home).with_suffix(".upload")
        with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as handle:
            async for chunk in request.stream():
                handle.write(chunk)
        return path
    raw = await request.body()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise RequestError("the body is not JSON") from None
    if not isinstance(body, dict):
        raise RequestError("the body must be a JSON object")
    return body


def _endpoint(route: ApiRoute, sessions: SessionStore, worker: Worker) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        html = route.page is not None and not web.wants_json(request)
        token = _bearer(request) or (request.cookies.get(web.SESSION_COOKIE, "") if route.page else "")
        try:
            user = await sessions.user(token)
        except Exception as exc:  # noqa: BLE001 - the inventory cannot be read: say why
            return error_response(exc)
        if user is None:
            if html:
                return web.login_redirect(request)
            return _json({"error": "no valid session: log in first (POST /session)", "privilege": None}, 401)
        if html:
            return await _page(route, user, request, worker)
        body: Any = None
        try:
            body = await _body(request, route.body, worker)
            call = Call(dict(request.path_params), dict(request.query_params), body)
            if route.body == "bytes":  # nothing is accepted for one who may not do this at all
                await worker.run(lambda m: m.gate.check(user, route.operation, _upload_target(route, call)))
            result = await worker.run(lambda m: route.handler(UserSession(m, user), call))
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
            return error_response(exc)
        finally:
            if isinstance(body, Path):
                body.unlink(missing_ok=True)
        if isinstance(result, Binary):
            return Response(result.data, media_type=result.media_type, headers=result.headers)
        if isinstance(result, TempFile):
            return FileResponse(result.path, media_type=BINARY, headers=result.headers,
                                background=BackgroundTask(result.path.unlink, missing_ok=True))
        return _json(result)
    endpoint.operation = route.operation  # type: ignore[attr-defined]
    endpoint.__name__ = f"{route.method.lower()} {route.path}"
    return endpoint


async def _page(route: ApiRoute, user: str, request: Request, worker: Worker) -> Response:
    """The route's HTML view: its result rendered, or its error as a page with the same status."""
    call = Call(dict(request.path_params), dict(request.query_params))
    try:
        result = await worker.run(lambda m: route.handler(UserSession(m, user), call))
    except Exception as exc:  # noqa: BLE001 - every failure becomes an error page
        error = error_response(exc)
        return web.error_page(error.status_code, json.loads(error.body)["error"], user)
    assert route.page is not None
    return web.render(route.page, report=result, user=user)


def _upload_target(route: ApiRoute, call: Call):  # noqa: ANN202 - a gate Target
    return datastore_target(call.query.get("datastore") or _missing("datastore"))


class NoSniff:
    """ASGI middleware: every answer says ``X-Content-Type-Options: nosniff``, so a browser never
    reads a JSON answer (which may carry host names and reasons a host chose) as a page."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-content-type-options"]
                message = {**message, "headers": [*headers, (b"x-content-type-options", b"nosniff")]}
            await send(message)

        await self.app(scope, receive, send_with_header)


def build_app(home: str | os.PathLike[str], keys: KeyManager | None = None) -> Starlette:
    """The API of the management home ``home`` (which must have an inventory)."""
    worker = Worker(Path(home), keys)
    sessions = SessionStore(worker)

    async def login(request: Request) -> Response:
        try:
            body = await _body(request, "json", worker)
            user, password = body.get("user"), body.get("password")
            if not isinstance(user, str) or not isinstance(password, str):
                raise RequestError("log in with a JSON object holding 'user' and 'password'")
            await worker.run(lambda m: m.login(user, password))
        except InventoryError as exc:
            return _json({"error": str(exc), "privilege": None}, 401)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        try:
            token, expires = await sessions.open(user)
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        return _json({"token": token, "user": user,
                      "expires": datetime.datetime.fromtimestamp(expires, datetime.timezone.utc).isoformat()})

    async def logout(request: Request) -> Response:
        try:
            closed = await sessions.close(_bearer(request))
        except Exception as exc:  # noqa: BLE001
            return error_response(exc)
        return _json({"logged_out": closed}, 200 if closed else 401)

    async def health(request: Request) -> Response:
        return _json({"ok": True})

    async def authenticate(user: str, password: str) -> bool:
        try:
            await worker.run(lambda m: m.login(user, password))
        except InventoryError:
            return False
        return True

    async def login_page(request: Request) -> Response:
        return web.login_form(request)

    async def login_form(request: Request) -> Response:
        return await web.login_submit(request, authenticate, sessions.open, int(sessions.lifetime))

    async def logout_form(request: Request) -> Response:
        return await web.logout(request, sessions.close)

    routes = [Route("/session", login, methods=["POST"]), Route("/session", logout, methods=["DELETE"]),
              Route("/health", health, methods=["GET"]), Route("/login", login_page, methods=["GET"]),
              Route("/login", login_form, methods=["POST"]), Route("/logout", logout_form, methods=["POST"])]
    routes += [Route(r.path, _endpoint(r, sessions, worker), methods=[r.method]) for r in ROUTES]
    app = Starlette(routes=routes, middleware=[Middleware(NoSniff)])
    app.state.worker = worker
    app.state.sessions = sessions
    return app
