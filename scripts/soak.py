"""Soak: many vTPMs in one `vtpm host`, concurrent clients against a model, SIGKILLs of the host.

One host process serves ``--vtpms`` vTPMs, each with its own state directory
encrypted under its own key file. ``--clients`` threads each own a share of
the vTPMs and run random operations on them: NV_Write and NV_Read of an
ordinary index, NV_Increment and NV_Read of a counter, PCR_Extend and
PCR_Read of PCR 16, a signing key (CreatePrimary, Sign, signature checked,
FlushContext) and an HMAC session (StartAuthSession, FlushContext). Every
answer is checked against a model of what the vTPM must hold. Every
``--kill-every`` seconds the host is killed with SIGKILL and started again;
the vTPMs are added back and each client reconciles its vTPMs with the model:

- an acknowledged NV write or increment must be there (otherwise: a lost
  acknowledged write);
- an operation in flight at the kill may have landed or not, nothing else;
- PCRs start again from zero (Startup(CLEAR) after a power loss).

At the end the host is killed once more and every vTPM is checked. The report
counts operations, kills, lost acknowledged writes and divergences (any other
difference from the model, any unexpected error); the exit status is 0 only
when both are 0.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TESTS = Path(__file__).resolve().parent.parent / "tests"
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from cryptography.hazmat.primitives import hashes  # noqa: E402
from cryptography.hazmat.primitives.asymmetric import ec  # noqa: E402
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, encode_dss_signature  # noqa: E402

from support.tpm_helpers import TPM_SE_HMAC, nv_increment, session_from_response, start_auth_session  # noqa: E402
from support.tpm_key_helpers import ecc_signing_template  # noqa: E402
from vmcrypt.vtpm_command import command_line  # noqa: E402
from vtpm import wire  # noqa: E402
from vtpm.client import TpmClient, TpmCommandError  # noqa: E402
from vtpm.constants import ALG, CC, NT, RH, ST, TPMA_NV  # noqa: E402
from vtpm.host_protocol import HostClient, HostError  # noqa: E402
from vtpm.marshal.objects import TPMT_PUBLIC  # noqa: E402
from vtpm.transport import TransportError  # noqa: E402

DATA_INDEX, COUNTER_INDEX = 0x01500000, 0x01500001
DATA_SIZE = 32
PCR = 16
OWNER_RW = TPMA_NV.OWNERWRITE | TPMA_NV.OWNERREAD | TPMA_NV.NO_DA
OPERATIONS = ("nv_write", "nv_read", "increment", "pcr_extend", "pcr_read", "sign", "session")
START_TIMEOUT = 30.0


class Divergence(Exception):
    """The vTPM answered something the model does not allow."""


@dataclass
class Model:
    """What one vTPM must hold; ``pending_*`` is an operation whose answer was lost to a kill."""

    name: str
    nv: bytes = bytes(DATA_SIZE)
    nv_history: list[bytes] = field(default_factory=list)  # earlier acknowledged values
    nv_pending: bytes | None = None
    counter: int | None = None  # None until the first increment is acknowledged
    counter_pending: bool = False
    pcr: bytes = bytes(32)
    acknowledged_writes: int = 0


@dataclass
class Report:
    operations: Counter = field(default_factory=Counter)
    kills: int = 0
    lost_writes: list[str] = field(default_factory=list)
    divergences: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def lost(self, text: str) -> None:
        with self.lock:
            self.lost_writes.append(text)

    def diverged(self, text: str) -> None:
        with self.lock:
            self.divergences.append(text)

    def count(self, operation: str) -> None:
        with self.lock:
            self.operations[operation] += 1


class Host:
    """The `vtpm host` process and its vTPMs; restarted after each kill."""

    def __init__(self, work: Path, count: int) -> None:
        self.work = work
        self.control = str(work / "host.sock")
        self.names = [f"vm{i:04d}" for i in range(count)]
        self.process: subprocess.Popen[bytes] | None = None
        self.epoch = 0
        self.ready = threading.Condition()
        self.running = False

    def data_path(self, name: str) -> str:
        return str(self.work / "sockets" / f"{name}.sock")

    def start(self) -> None:
        log = open(self.work / "host.log", "ab")  # noqa: SIM115  (kept by the child)
        self.process = subprocess.Popen(command_line("host", "--socket", self.control), stdout=log, stderr=log,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        client = HostClient(self.control, timeout=START_TIMEOUT)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                client.ping()
                break
            except HostError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"error: the vtpm host did not start; see {self.work / 'host.log'}") from None
                time.sleep(0.05)
        (self.work / "sockets").mkdir(exist_ok=True)
        for name in self.names:
            state = self.work / "state" / name
            state.mkdir(parents=True, exist_ok=True)
            client.add(name, state=str(state), key_file=str(self.work / "keys" / name),
                       data_unix=self.data_path(name), startup_clear=True)
        with self.ready:
            self.epoch += 1
            self.running = True
            self.ready.notify_all()

    def kill(self) -> None:
        with self.ready:
            self.running = False
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_running(self, after_epoch: int, deadline: float) -> int:
        """The epoch of a host started after ``after_epoch`` (blocks while the host is down)."""
        with self.ready:
            while not (self.running and self.epoch > after_epoch):
                if not self.ready.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise SystemExit("error: the vtpm host did not come back")
            return self.epoch


def make_keys(work: Path, names: list[str]) -> None:
    keys = work / "keys"
    keys.mkdir(mode=0o700, exist_ok=True)
    for name in names:
        path = keys / name
        path.write_bytes(os.urandom(32))
        path.chmod(0o600)


class Worker(threading.Thread):
    """One client: its own vTPMs, one connection to each, random operations checked against the models."""

    def __init__(self, host: Host, models: list[Model], report: Report, seed: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.host, self.models, self.report, self.stop_event = host, models, report, stop
        self.random = random.Random(seed)
        self.clients: dict[str, TpmClient] = {}
        self.epoch = 0
        self.failure: BaseException | None = None

    def client(self, model: Model) -> TpmClient:
        if model.name not in self.clients:
            self.clients[model.name] = TpmClient.swtpm_unix(self.host.data_path(model.name), timeout=60)
        return self.clients[model.name]

    def drop_connections(self) -> None:
        for client in self.clients.values():
            client.close()
        self.clients.clear()

    def run(self) -> None:
        try:
            self.epoch = self.host.wait_running(0, time.monotonic() + START_TIMEOUT)
            for model in self.models:
                self.prepare(model)
            while not self.stop_event.is_set():
                if self.host.epoch != self.epoch:
                    self.after_restart()
                model = self.random.choice(self.models)
                operation = self.random.choice(OPERATIONS)
                try:
                    getattr(self, operation)(self.client(model), model)
                    self.report.count(operation)
                except (TransportError, OSError, ConnectionError):
                    if self.host.running and self.host.epoch == self.epoch:
                        time.sleep(0.05)  # the kill may be under way: give it the chance to show
                        if self.host.running and self.host.epoch == self.epoch:
                            self.report.diverged(f"{model.name}: {operation}: connection lost while the host ran")
                    self.after_restart()
                except (Divergence, TpmCommandError) as exc:
                    self.report.diverged(f"{model.name}: {operation}: {exc}")
            self.drop_connections()
        except BaseException as exc:  # reported by main
            self.failure = exc

    def after_restart(self) -> None:
        """Wait for the host to be back, then reconcile every own vTPM with its model."""
        self.drop_connections()
        self.epoch = self.host.wait_running(self.epoch, time.monotonic() + 120)
        for model in self.models:
            reconcile(self.client(model), model, self.report)

    # ------------------------------------------------------------------ set-up

    def prepare(self, model: Model) -> None:
        client = self.client(model)
        client.nv_define(DATA_INDEX, OWNER_RW, DATA_SIZE, auth_handle=RH.OWNER)
        client.nv_write(DATA_INDEX, model.nv, auth_handle=RH.OWNER)
        client.nv_define(COUNTER_INDEX, OWNER_RW | (NT.COUNTER << 4), 8, auth_handle=RH.OWNER)

    # ------------------------------------------------------------------ operations

    def nv_write(self, client: TpmClient, model: Model) -> None:
        value = self.random.randbytes(DATA_SIZE)
        model.nv_pending = value
        client.nv_write(DATA_INDEX, value, auth_handle=RH.OWNER)
        model.nv_history.append(model.nv)
        model.nv, model.nv_pending = value, None
        model.acknowledged_writes += 1

    def nv_read(self, client: TpmClient, model: Model) -> None:
        value = client.nv_read(DATA_INDEX, DATA_SIZE, RH.OWNER)
        if value != model.nv:
            raise Divergence(f"NV holds {value.hex()[:16]}…, the model {model.nv.hex()[:16]}…")

    def increment(self, client: TpmClient, model: Model) -> None:
        model.counter_pending = True
        client.call(nv_increment(COUNTER_INDEX, auth_handle=RH.OWNER))
        model.counter = 1 if model.counter is None else model.counter + 1  # a fresh counter starts at 0, then 1
        model.counter_pending = False
        model.acknowledged_writes += 1
        value = read_counter(client)
        if value is None or value < model.counter:
            raise Divergence(f"counter {value} after increment to {model.counter}")
        model.counter = value  # the first increment sets it to the highest count this TPM has seen

    def pcr_extend(self, client: TpmClient, model: Model) -> None:
        digest = self.random.randbytes(32)
        client.pcr_extend(PCR, {ALG.SHA256: digest})
        model.pcr = hashlib.sha256(model.pcr + digest).digest()

    def pcr_read(self, client: TpmClient, model: Model) -> None:
        value = client.pcr_read({ALG.SHA256: [PCR]})[ALG.SHA256][PCR]
        if value != model.pcr:
            raise Divergence(f"PCR {PCR} is {value.hex()[:16]}…, the model {model.pcr.hex()[:16]}…")

    def sign(self, client: TpmClient, model: Model) -> None:
        handle, public = client.create_primary(RH.OWNER, ecc_signing_template())
        try:
            digest = self.random.randbytes(32)
            params = (wire.tpm2b(digest) + ALG.NULL.to_bytes(2, "big")
                      + ST.HASHCHECK.to_bytes(2, "big") + RH.NULL.to_bytes(4, "big") + wire.tpm2b(b""))
            out = client.call(wire.build_command(CC.Sign, [handle], params, wire.PASSWORD_SESSION)).parameters()
            r_size = int.from_bytes(out[4:6], "big")
            r = out[6 : 6 + r_size]
            s = out[8 + r_size : 8 + r_size + int.from_bytes(out[6 + r_size : 8 + r_size], "big")]
            unique = TPMT_PUBLIC.parse(public).unique
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(unique.x, "big"), int.from_bytes(unique.y, "big"),
                                                ec.SECP256R1()).public_key()
            signature = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
            try:
                key.verify(signature, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            except Exception as exc:
                raise Divergence("the signature does not verify") from exc
        finally:
            client.flush(handle)

    def session(self, client: TpmClient, model: Model) -> None:
        handle, nonce = session_from_response(client.transact(start_auth_session(TPM_SE_HMAC)))
        if len(nonce) != 32:
            raise Divergence(f"nonceTPM of {len(nonce)} bytes")
        client.flush(handle)


def read_counter(client: TpmClient) -> int | None:
    """The counter's value, or None while it was never incremented (NV_Read then fails: not written)."""
    try:
        return int.from_bytes(client.nv_read(COUNTER_INDEX, 8, RH.OWNER), "big")
    except TpmCommandError:
        return None


def reconcile(client: TpmClient, model: Model, report: Report) -> None:
    """After a restart: what was acknowledged is there, what was in flight landed or not, PCRs are zero."""
    value = client.nv_read(DATA_INDEX, DATA_SIZE, RH.OWNER)
    if value == model.nv_pending:
        model.nv_history.append(model.nv)
        model.nv = value
        model.acknowledged_writes += 1
    elif value != model.nv:
        if value in model.nv_history:
            report.lost(f"{model.name}: NV went back to an earlier value after a kill")
        else:
            report.diverged(f"{model.name}: NV holds a value nobody wrote")
        model.nv = value
    model.nv_pending = None

    counter = read_counter(client)
    if model.counter is not None:
        allowed = {model.counter, model.counter + 1} if model.counter_pending else {model.counter}
        if counter is None or counter < model.counter:
            report.lost(f"{model.name}: counter {counter} below the acknowledged {model.counter}")
        elif counter not in allowed:
            report.diverged(f"{model.name}: counter {counter}, the model allows {sorted(allowed)}")
    model.counter = counter
    model.counter_pending = False

    model.pcr = bytes(32)
    pcr = client.pcr_read({ALG.SHA256: [PCR]})[ALG.SHA256][PCR]
    if pcr != model.pcr:
        report.diverged(f"{model.name}: PCR {PCR} not reset by Startup(CLEAR) after a kill")


def run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    host = Host(work, args.vtpms)
    make_keys(work, host.names)
    models = [Model(name) for name in host.names]
    report = Report()
    stop = threading.Event()
    workers = [Worker(host, models[i :: args.clients], report, args.seed * 1000 + i, stop) for i in range(args.clients)]
    started = time.monotonic()
    host.start()
    for worker in workers:
        worker.start()
    next_kill = started + args.kill_every
    end = started + args.duration
    while time.monotonic() < end:
        time.sleep(max(0.0, min(next_kill, end) - time.monotonic()))
        if time.monotonic() >= next_kill and time.monotonic() < end:
            host.kill()
            report.kills += 1
            host.start()
            next_kill = time.monotonic() + args.kill_every
        if any(w.failure for w in workers):
            break
    stop.set()
    for worker in workers:
        worker.join(timeout=120)
    failures = [repr(w.failure) for w in workers if w.failure] + [f"{w.name} did not stop" for w in workers if w.is_alive()]
    # A last power loss, then every vTPM against its model.
    host.kill()
    report.kills += 1
    host.start()
    for model in models:
        client = TpmClient.swtpm_unix(host.data_path(model.name), timeout=60)
        with client:
            reconcile(client, model, report)
    host.stop()
    return {
        "vtpms": args.vtpms,
        "clients": args.clients,
        "seconds": round(time.monotonic() - started, 1),
        "kills": report.kills,
        "operations": dict(sorted(report.operations.items())),
        "operations_total": sum(report.operations.values()),
        "acknowledged_writes": sum(m.acknowledged_writes for m in models),
        "lost_acknowledged_writes": len(report.lost_writes),
        "divergences": len(report.divergences) + len(failures),
        "details": (report.lost_writes + report.divergences + failures)[:50],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vtpms", type=int, default=100, help="vTPMs in the host (default 100)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--duration", type=float, default=600, help="seconds of load (default 600)")
    parser.add_argument("--kill-every", type=float, default=30, help="seconds between SIGKILLs of the host (default 30)")
    parser.add_argument("--seed", type=int, default=1, help="random seed of the operations")
    parser.add_argument("--work", metavar="DIR", help="keep state, keys and the host log here (default: a temp dir)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args()
    if not 1 <= args.clients <= args.vtpms <= 5000:
        parser.error("need 1 <= --clients <= --vtpms <= 5000")
    if not 0 < args.kill_every <= args.duration <= 86400:
        parser.error("need 0 < --kill-every <= --duration <= 86400")
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
        result = run(args, Path(args.work).resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="vtpm-soak-") as tmp:
            result = run(args, Path(tmp))
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{result['vtpms']} vTPMs, {result['clients']} clients, {result['seconds']} s, {result['kills']} kills")
        print(f"operations: {result['operations_total']} ({', '.join(f'{k} {v}' for k, v in result['operations'].items())})")
        print(f"acknowledged writes: {result['acknowledged_writes']}")
        print(f"lost acknowledged writes: {result['lost_acknowledged_writes']}")
        print(f"divergences: {result['divergences']}")
        for line in result["details"]:
            print(f"  {line}")
    return 0 if result["lost_acknowledged_writes"] == 0 and result["divergences"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
