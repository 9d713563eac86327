"""The in-process TPM campaign: mutated commands into ``Tpm.execute``, every response checked, counts kept.

Episodes: a TPM restored from the prepared snapshot (``TpmState`` bytes), most
of them prepared (Startup, child loaded, sequence, sessions; see
``seeds.prepare_episode``), some left before Startup; each runs a few hundred
to a few thousand commands so state can drift (hierarchies disabled,
lockout, indices deleted, sessions flushed) before the next restart undoes
it. Commands are drawn from a shuffled deck of every implemented command, so
each gets its share; each is its seed mutated (``frames.Mutator``), sent at
a random locality (mostly 0), timed and checked (``frames.check_response``).
An exception the engine catches is logged by ``vtpm.engine``; a handler on
that logger turns each into a crash finding with the input and traceback,
even when the response hides it (a persistence failure answers
TPM_RC_NV_UNAVAILABLE). At the end of every episode the state the engine
last persisted must load again and serialize to the same bytes.
"""

from __future__ import annotations

import logging
import random
import time
import traceback
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vtpm import wire
from vtpm.constants import CC, RC, SU
from vtpm.core import COMMANDS
from vtpm.engine import Tpm
from vtpm.state import TpmState

from support.fuzzing import seeds
from support.fuzzing.campaign import Deck, Stopwatch
from support.fuzzing.frames import (
    HANG_SECONDS,
    RESPONSE_HANDLES,
    Mutator,
    NoAnswer,
    Watchdog,
    check_response,
    rc_class,
    rc_name,
    rsa_key_generated,
)

MAX_KEPT = 25  # findings kept with their reproducer per kind (all are counted)
NO_ANSWER_SECONDS = 60.0  # the watchdog ends a call that has not answered by then (a hang, recorded)
HISTORY = 12  # commands before a finding, kept with it
SEQUENCE_ENDING = {CC.SequenceComplete, CC.EventSequenceComplete}


NAMES = {code: spec.code.name for code, spec in COMMANDS.items()}


def command_name(code: int) -> str:
    name = NAMES.get(code)
    return name if name is not None else f"0x{code:08x}"


@dataclass
class Finding:
    kind: str  # crash, hang, malformed, state
    command: str  # the seed's command
    detail: str
    input_hex: str
    locality: int = 0
    started: bool = True
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    traceback: str = ""
    history: list[str] = field(default_factory=list)  # hex of the commands sent before it in this episode
    signature: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v not in ("", [], None)}


@dataclass
class TpmReport:
    seed: int
    total: int = 0
    per_command: Counter = field(default_factory=Counter)
    per_command_success: Counter = field(default_factory=Counter)
    response_classes: Counter = field(default_factory=Counter)
    response_codes: Counter = field(default_factory=Counter)
    mutations: Counter = field(default_factory=Counter)
    localities: Counter = field(default_factory=Counter)
    unimplemented_codes: int = 0
    setup_commands: int = 0
    episodes: int = 0
    episodes_before_startup: int = 0
    power_cycles: int = 0
    crashes: int = 0
    hangs: int = 0
    malformed: int = 0
    state_failures: int = 0
    slow_rsa_key_generations: list[dict[str, Any]] = field(default_factory=list)
    slow_waiting_for_cpu: int = 0  # over 2 s on the clock, under 2 s of CPU: the machine was busy
    slow_waiting_examples: list[dict[str, Any]] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    crash_signatures: Counter = field(default_factory=Counter)
    slowest_seconds: float = 0.0
    slowest_command: str = ""
    elapsed: float = 0.0
    prepare_seconds: float = 0.0

    @property
    def commands_per_second(self) -> float:
        return self.total / self.elapsed if self.elapsed else 0.0

    @property
    def clean(self) -> bool:
        return not (self.crashes or self.hangs or self.malformed or self.state_failures)

    def to_dict(self) -> dict[str, Any]:
        implemented = {command_name(code) for code in COMMANDS}
        per_command = {name: self.per_command.get(name, 0) for name in sorted(implemented)}
        return {
            "seed": self.seed,
            "total": self.total,
            "commands_per_second": round(self.commands_per_second, 1),
            "elapsed_seconds": round(self.elapsed, 2),
            "prepare_seconds": round(self.prepare_seconds, 2),
            "implemented_commands": len(implemented),
            "per_command": per_command,
            "per_command_min": min(per_command.values()) if per_command else 0,
            "per_command_success": {name: self.per_command_success.get(name, 0) for name in sorted(implemented)},
            "response_classes": dict(self.response_classes.most_common()),
            "response_codes": dict(self.response_codes.most_common()),
            "mutations": dict(self.mutations.most_common()),
            "localities": {str(k): v for k, v in sorted(self.localities.items())},
            "unimplemented_codes": self.unimplemented_codes,
            "setup_commands": self.setup_commands,
            "episodes": self.episodes,
            "episodes_before_startup": self.episodes_before_startup,
            "power_cycles": self.power_cycles,
            "crashes": self.crashes,
            "hangs": self.hangs,
            "malformed": self.malformed,
            "state_failures": self.state_failures,
            "slow_rsa_key_generations": self.slow_rsa_key_generations,
            "slow_waiting_for_cpu": self.slow_waiting_for_cpu,
            "slow_waiting_examples": self.slow_waiting_examples,
            "crash_signatures": dict(self.crash_signatures.most_common()),
            "slowest_command": {"command": self.slowest_command, "seconds": round(self.slowest_seconds, 3)},
            "findings": [f.to_dict() for f in self.findings],
        }


class EngineErrors(logging.Handler):
    """Collects what vtpm.engine logs with a traceback (an exception it caught) while the campaign runs."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def take(self) -> list[logging.LogRecord]:
        records, self.records = self.records, []
        return records

    def __enter__(self) -> EngineErrors:
        self.logger = logging.getLogger("vtpm.engine")
        self.saved = self.logger.propagate
        self.logger.addHandler(self)
        self.logger.propagate = False  # the campaign reports them; they need not flood stderr
        return self

    def __exit__(self, *exc: object) -> None:
        self.logger.removeHandler(self)
        self.logger.propagate = self.saved


def describe_exception(record: logging.LogRecord) -> tuple[str, str]:
    """(signature: exception type at its innermost project frame, a short traceback)."""
    if not record.exc_info or record.exc_info[1] is None:
        return record.getMessage(), record.getMessage()
    exc = record.exc_info[1]
    frames = traceback.extract_tb(record.exc_info[2])
    ours = [f for f in frames if "/vtpm/" in f.filename] or frames
    where = f"{ours[-1].filename.rsplit('/vtpm/', 1)[-1]}:{ours[-1].lineno}" if ours else "?"
    text = "".join(traceback.format_exception(type(exc), exc, record.exc_info[2])[-8:])
    return f"{type(exc).__name__} at vtpm/{where}", text


class Campaign:
    """One in-process campaign; ``run`` returns its report."""

    def __init__(self, commands: int, seed: int, *, rsa_bits: int = seeds.RSA_BITS, rsa_rate: float = 1.0,
                 progress: Callable[[TpmReport], None] | None = None, episode_length: tuple[int, int] = (200, 6000)) -> None:
        self.commands = commands
        self.rng = random.Random(seed)
        self.report = TpmReport(seed)
        self.progress = progress
        self.episode_length = episode_length
        self.rsa_bits = rsa_bits
        self.rsa_rate = rsa_rate  # scales how often seeds ask for a new RSA key (each costs 0.1-5 s of CPU)
        missing = seeds.missing_seeds()
        if missing:
            raise RuntimeError(f"implemented commands without a fuzzing seed: {', '.join(missing)}")
        self.implemented = sorted(COMMANDS)
        self.mutator = Mutator(self.rng, self.implemented)
        self.deck = Deck(self.rng, self.implemented)
        self.history: deque[str] = deque(maxlen=HISTORY)
        self.errors = EngineErrors()

    # --------------------------------------------------------------- preparation

    def _prepare(self) -> None:
        start = time.perf_counter()
        tpm = Tpm()
        transact = self._setup_transact(tpm)
        transact(wire.STARTUP_CLEAR)
        self.art = seeds.build_snapshot(transact, self.rsa_bits)
        self.snapshot = tpm.state.to_bytes()
        self.report.prepare_seconds = time.perf_counter() - start

    def _setup_transact(self, tpm: Tpm, locality: int = 0) -> Callable[[bytes], bytes]:
        def transact(command: bytes) -> bytes:
            self.report.setup_commands += 1
            response = tpm.execute(locality, command)
            self._check(tpm, command, response, 0.0, "setup", locality)
            return response

        return transact

    # --------------------------------------------------------------- findings

    def _keep(self, finding: Finding) -> None:
        same = sum(1 for f in self.report.findings if f.kind == finding.kind)
        if same < MAX_KEPT:
            finding.history = [command.hex() for command in self.history]
            self.report.findings.append(finding)

    def _check(self, tpm: Tpm, command: bytes, response: object, seconds: float, name: str, locality: int,
               cpu: float = 0.0) -> None:
        report = self.report
        problem = check_response(command, response)
        records = self.errors.take()
        started = tpm.volatile.started
        if records:
            report.crashes += 1
            signature, text = describe_exception(records[0])
            report.crash_signatures[signature] += 1
            if report.crash_signatures[signature] == 1:
                self._keep(Finding("crash", name, records[0].getMessage(), command.hex(), locality, started, seconds,
                                   cpu, traceback=text, signature=signature))
        elif problem is not None:
            kind, why = problem
            if kind == "crash":
                report.crashes += 1
                report.crash_signatures["TPM_RC_FAILURE without a logged exception"] += 1
            else:
                report.malformed += 1
            self._keep(Finding(kind, name, why, command.hex(), locality, started, seconds, cpu))
        if cpu > HANG_SECONDS:  # the engine itself worked that long (wall time also counts waiting for a CPU)
            bits = rsa_key_generated(command, response) if isinstance(response, bytes) else 0
            if bits:  # an RSA key was made and returned: slow, not stuck; reported apart
                report.slow_rsa_key_generations.append({"command": name, "bits": bits, "seconds": round(seconds, 2),
                                                        "cpu_seconds": round(cpu, 2)})
            else:
                report.hangs += 1
                self._keep(Finding("hang", name, f"{cpu:.2f} s of CPU ({seconds:.2f} s)", command.hex(), locality,
                                   started, seconds, cpu))
        elif seconds > HANG_SECONDS:
            report.slow_waiting_for_cpu += 1
            if len(report.slow_waiting_examples) < MAX_KEPT:
                report.slow_waiting_examples.append({"command": name, "seconds": round(seconds, 2),
                                                     "cpu_seconds": round(cpu, 2)})
        if seconds > report.slowest_seconds:
            report.slowest_seconds, report.slowest_command = seconds, name

    # --------------------------------------------------------------- the campaign

    def _next_code(self) -> int:
        return self.deck.draw()

    def _locality(self) -> int:
        return 0 if self.rng.random() < 0.6 else self.rng.randrange(5)

    def run(self) -> TpmReport:
        self.watchdog = Watchdog(NO_ANSWER_SECONDS).start()
        with Stopwatch(self.report, self.progress) as clock:
            try:
                with self.errors:
                    self._prepare()
                    while self.report.total < self.commands:
                        self._episode()
                        clock.tick()
            finally:
                self.watchdog.close()
        return self.report

    def _episode(self) -> None:
        rng, report = self.rng, self.report
        persisted: list[bytes] = []
        # a quarter of the episodes persist after every command that changes state, as a served TPM does;
        # the others serialize their state once, at the end (to_bytes is most of a cheap command's time)
        tpm = Tpm(TpmState.from_bytes(self.snapshot), persist=persisted.append if rng.random() < 0.25 else None)
        setup = self._setup_transact(tpm)
        report.episodes += 1
        self.history.clear()
        if report.episodes % 12 == 2 or rng.random() < 0.04:
            ep = seeds.Episode()
            report.episodes_before_startup += 1
            length = rng.randint(50, 400)
        else:
            ep = seeds.prepare_episode(setup, self.art, rng)
            low, high = self.episode_length
            length = rng.randint(low, high) if rng.random() < 0.3 else rng.randint(low, max(low, high // 6))
        ctx = seeds.SeedContext(self.art, ep, rng, setup, self.rsa_rate)
        prepared = {seeds.PRIMARY, *seeds.PERSISTENT, *(h for h in (ep.child, ep.sequence, ep.hmac_session,
                                                                      ep.policy_session) if h is not None)}
        self.mutator.known_handles = tuple(prepared) + seeds.NV_INDICES
        for _ in range(min(length, self.commands - report.total)):
            if not self._one(tpm, ctx, prepared):
                return
            if rng.random() < 1 / 3000:
                self._power_cycle(tpm, setup)
        self._check_persisted(persisted or [tpm.state.to_bytes()])

    def _power_cycle(self, tpm: Tpm, setup: Callable[[bytes], bytes]) -> None:
        self.report.power_cycles += 1
        if self.rng.random() < 0.5:
            setup(wire.shutdown(self.rng.choice((SU.STATE, SU.CLEAR))))
        tpm.power_cycle()
        if self.rng.random() < 0.8:
            setup(wire.startup(self.rng.choice((SU.STATE, SU.CLEAR))))

    def _one(self, tpm: Tpm, ctx: seeds.SeedContext, prepared: set[int]) -> bool:
        """One mutated command; False if the episode must end (the call was interrupted)."""
        rng, report = self.rng, self.report
        code = self._next_code()
        name = command_name(code)
        frame = seeds.SEEDS[code](ctx)
        for command in frame.prelude:
            ctx.transact(command)  # type: ignore[misc]
        data, applied = self.mutator.mutate(frame)
        if len(self.mutator.splice_pool) < 256:
            self.mutator.splice_pool.append(data)
        elif rng.random() < 0.05:
            self.mutator.splice_pool[rng.randrange(256)] = data
        locality = self._locality()
        began, cpu_began = time.perf_counter(), time.thread_time()
        try:
            with self.watchdog:
                response = tpm.execute(locality, data)
        except NoAnswer as exc:
            report.total += 1
            report.per_command[name] += 1
            report.hangs += 1
            self._keep(Finding("hang", name, str(exc), data.hex(), locality, tpm.volatile.started,
                               time.perf_counter() - began, time.thread_time() - cpu_began))
            return False  # the TPM was interrupted mid-command: start a new episode
        seconds, cpu = time.perf_counter() - began, time.thread_time() - cpu_began
        report.total += 1
        report.per_command[name] += 1
        mutations = report.mutations
        for applied_name in applied:
            mutations[applied_name] += 1
        report.localities[locality] += 1
        header_code = int.from_bytes(data[6:10], "big") if len(data) >= 10 else -1
        if header_code not in COMMANDS:
            report.unimplemented_codes += 1
        self._check(tpm, data, response, seconds, name, locality, cpu)
        self.history.append(data)
        if not isinstance(response, bytes) or len(response) < 10:
            return True
        report.response_classes[rc_class(response, data)] += 1
        report.response_codes[rc_name(response)] += 1
        if wire.response_code(response) == RC.SUCCESS:
            if header_code == code:
                report.per_command_success[name] += 1
            self._housekeeping(tpm, data, response, prepared, header_code)
        return True

    def _housekeeping(self, tpm: Tpm, command: bytes, response: bytes, prepared: set[int], code: int) -> None:
        """Flush most objects and sessions a successful command created, so slots stay free for the next ones."""
        if RESPONSE_HANDLES.get(code) and len(response) >= 14:
            handle = int.from_bytes(response[10:14], "big")
            if handle not in prepared and self.rng.random() < 0.85:
                self._setup_transact(tpm)(wire.flush_context(handle))

    def _check_persisted(self, persisted: list[bytes]) -> None:
        if not persisted:
            return
        raw = persisted[-1]
        try:
            again = TpmState.from_bytes(raw).to_bytes()
            problem = None if again == raw else "the persisted state reloads to different bytes"
        except Exception as exc:  # noqa: BLE001 - any failure to reload is the finding
            problem = f"the persisted state does not load again: {type(exc).__name__}: {exc}"
        if problem:
            self.report.state_failures += 1
            self._keep(Finding("state", "persist", problem, raw[:4096].hex()))


def run_tpm_campaign(commands: int, seed: int, **options: Any) -> TpmReport:
    return Campaign(commands, seed, **options).run()
