"""Verified attestations per second on one core, and what each step of a verification costs.

One trusted ESXi-like host is booted into a real engine (a ~55-event crypto-agile boot log
in SHA-1 and SHA-256, a ~106-entry ima-ng list); its reports answer real challenges of
``vmcrypt.trust.verifier.Verifier``. A verification is everything ``Verifier.verify`` does:
nonce (known, unexpired, single use, = extraData), EK trust, AK binding (activated secret),
quote structure and RSASSA-SHA256 signature, PCRs 0-10 of the signed selection against the
signed digest, replay of the boot log and of the IMA list against the signed values, and the
policy check of every component, VIB signature check, runtime file and Secure Boot against
the trusted image. Every IMA entry's framing is parsed and every entry extended; entries whose
template data is exactly one of the trusted image's files take their SHA-256 from the image's
reference values (computed once per policy) instead of being parsed and hashed again; likewise
a PCR 8 string that is one of a trusted image's has its digest compared with the reference
SHA-256 of its value.

Single use: a nonce is consumed by ``verify``. The reports are made once (each a real
ActivateCredential and Quote, each with its own nonce, so the quotes and signatures differ);
the timed verifications cycle through them, and before each one the benchmark puts the
challenge's record back, which is a dictionary store, so every verification sees a fresh
nonce exactly as after ``challenge``. The challenge itself (a software MakeCredential) is
timed as its own step. Nothing of a report, a log or a replay is kept between verifications:
verifying a report again does exactly the work of verifying a new one.

The per-entry loops of the boot log parse and replay and of the IMA replay run compiled
(``vtpm/_measure.c``) when the extension is built; the same verification with the pure-Python
loops (the reference they follow) is measured in the same run, and the ratio printed.

The EK certificate chain check is cached per EK certificate (until the policy changes):
the figure is given with the cache and without it.

Times are CPU time of this thread (``time.thread_time``), the best of ``--repeat`` batches:
on a machine shared with other work, that is the cost on one core. The Keylime figures are
the issue's reference for its verifier logic on this kind of machine.

    python benchmarks/attestation_rate.py [--number 500] [--repeat 5]
    python -m pytest benchmarks/attestation_rate.py    (pytest-benchmark)
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))  # support/ (-> tests/support)

from support.trust import boot_trusted_host, trusted_policy  # noqa: E402
from vmcrypt.trust.collect import HostEvidence  # noqa: E402
from vmcrypt.trust.evidence import AttestationReport  # noqa: E402
from vmcrypt.trust.measurements import check_image, read_boot_log  # noqa: E402
from vmcrypt.trust.verifier import Verifier  # noqa: E402
import vtpm.eventlog  # noqa: E402
import vtpm.ima  # noqa: E402
from vtpm.constants import ALG  # noqa: E402
from vtpm.eventlog import parse_event_log, replay  # noqa: E402
from vtpm.ima import boot_aggregate, parse_ima_log, replay_ima, replay_ima_with_reference  # noqa: E402
from vtpm.quote import parse_quote, parse_signature, pcr_digest, unwrap_tpm2b, verify_signature  # noqa: E402

KEYLIME_WITHOUT_BOOT_LOG = 1160  # verifications per second per core (the reference)
KEYLIME_WITH_BOOT_LOG = 96
TARGET = 4000


class Bench:
    """A booted host, a verifier and a few real reports, ready to be verified again and again."""

    def __init__(self, home: Path, reports: int = 8) -> None:
        self.host = boot_trusted_host(home)
        self.verifier = Verifier(trusted_policy(home))
        evidence = HostEvidence(self.host)
        ek, ak = evidence.identity()
        self.reports: list[AttestationReport] = []
        self.records = {}
        for _ in range(reports):
            challenge = self.verifier.challenge(ek, ak)
            self.records[challenge.nonce] = self.verifier._pending[challenge.nonce]
            self.reports.append(evidence.answer(challenge, host=self.host.name, version=self.host.version))
        self.ek, self.ak = ek, ak
        self._next = 0
        self.events = parse_event_log(self.reports[0].event_log).events
        self.ima = parse_ima_log(self.reports[0].ima_log)
        reference = self.verifier.policy.index[self.host.version].ima_reference
        self.ima_unknown = replay_ima_with_reference(self.reports[0].ima_log, reference)[1]  # what verify checks

    def verify_one(self) -> bool:
        report = self.reports[self._next % len(self.reports)]
        self._next += 1
        self.verifier._pending[report.nonce] = self.records[report.nonce]  # a fresh challenge's record
        return self.verifier.verify(report).passed

    def verify_uncached(self) -> bool:
        self.verifier._ek_verdicts.clear()
        return self.verify_one()

    # the steps, each on its own
    def step_quote(self) -> None:
        report = self.reports[0]
        quote = parse_quote(unwrap_tpm2b(report.quote, "quote"))
        signature = parse_signature(report.signature)
        verify_signature(self.records[report.nonce].ak.key, signature, quote.raw)
        assert quote.extra_data == report.nonce
        assert pcr_digest(signature.hash_alg, quote.pcr_select, report.pcr_values) == quote.pcr_digest

    def step_event_log(self) -> None:
        replay(parse_event_log(self.reports[0].event_log), (ALG.SHA256,))

    def step_ima(self) -> None:
        image = self.verifier.policy.index[self.host.version]
        replay_ima_with_reference(self.reports[0].ima_log, image.ima_reference)

    def step_ima_generic(self) -> None:
        replay_ima(parse_ima_log(self.reports[0].ima_log), (ALG.SHA256,))

    def step_policy(self) -> None:
        strings = self.verifier._reference_strings(self.verifier.policy)  # made once per policy
        facts = read_boot_log(self.events, strings)  # the logs parsed already (counted in the steps above)
        aggregate = boot_aggregate(self.reports[0].pcr_values[ALG.SHA256], ALG.SHA256)
        assert not check_image(facts, self.verifier.policy.index[facts.version], self.ima_unknown, aggregate)

    def hash_calls(self) -> int:
        """SHA-256 calls a verification cannot do without: every extend of the replays, the
        data-bound boot events, the quote and PCR digests (the template digests of the image's own
        runtime files are reference values, computed once per policy)."""
        bound = sum(1 for e in self.events if e.pcr == 8 or (e.pcr == 7 and e.event_type == 0x80000001))
        extended = sum(1 for e in self.events if e.event_type != 3)
        return extended + len(self.ima) + 1 + bound + 2  # IMA: the extends, boot_aggregate's template

    def step_ek_chain(self) -> None:
        assert self.verifier._judge_ek(self.ek, self.verifier.clock())[0] is None

    def step_challenge(self) -> None:
        self.verifier._pending.pop(self.verifier.challenge(self.ek, self.ak).nonce)

    def steps(self) -> dict[str, Callable[[], object]]:
        return {"quote: parse, AK signature, nonce, PCR digest": self.step_quote,
                "boot log: parse + replay (55 events, sha256)": self.step_event_log,
                "IMA list: replay with the image's reference values": self.step_ima,
                "IMA list: generic parse + replay (not used by verify)": self.step_ima_generic,
                "policy: the parsed logs against the trusted image": self.step_policy,
                "EK certificate chain (what the cache saves)": self.step_ek_chain,
                "challenge: MakeCredential to the EK (not in verify)": self.step_challenge}


@contextlib.contextmanager
def python_loops() -> Iterator[None]:
    """The verifier with the pure-Python parse and replay loops (the compiled ones set aside)."""
    saved = vtpm.eventlog._measure, vtpm.ima._measure
    vtpm.eventlog._measure = vtpm.ima._measure = None
    try:
        yield
    finally:
        vtpm.eventlog._measure, vtpm.ima._measure = saved


def best_seconds(function: Callable[[], object], number: int, repeat: int) -> float:
    """CPU seconds per call, best of ``repeat`` batches of ``number`` calls."""
    best = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        for _ in range(number):
            function()
        best = min(best, (time.thread_time() - start) / number)
    return best


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=500, help="verifications per batch")
    parser.add_argument("--repeat", type=int, default=5, help="batches (the best counts)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        bench = Bench(Path(home))
        assert bench.verify_one(), "the trusted host must pass"
        events = len(parse_event_log(bench.reports[0].event_log).events)
        entries = len(parse_ima_log(bench.reports[0].ima_log))
        cached = best_seconds(bench.verify_one, args.number, args.repeat)
        uncached = best_seconds(bench.verify_uncached, max(args.number // 5, 20), args.repeat)
        compiled = vtpm.eventlog.BACKEND == "openssl"
        if compiled:
            with python_loops():
                assert bench.verify_one(), "the trusted host must pass with the Python loops too"
                python = best_seconds(bench.verify_one, max(args.number // 2, 20), args.repeat)
        print(f"verified attestations per second on one core ({events}-event boot log, {entries}-entry IMA list, "
              "PCRs 0-10 sha256, RSA 2048 AK):")
        print(f"  each verification does every check on its report ({len(bench.reports)} reports, each its own "
              "nonce and quote, cycled); nothing of a report, log or replay is kept between verifications, "
              "only the EK chain verdict per certificate")
        print(f"  parse and replay loops: {'compiled (vtpm._measure, OpenSSL)' if compiled else 'pure Python'}")
        print(f"  EK chain cached per host   {1 / cached:8,.0f}/s   {cached * 1e6:7.1f} µs each   "
              f"(target {TARGET:,}/s)")
        print(f"  EK chain checked each time {1 / uncached:8,.0f}/s   {uncached * 1e6:7.1f} µs each")
        if compiled:
            print(f"  same, pure-Python loops    {1 / python:8,.0f}/s   {python * 1e6:7.1f} µs each   "
                  f"(compiled: {python / cached:.1f}x faster)")
        print(f"  Keylime 7.14.3 reference   {KEYLIME_WITHOUT_BOOT_LOG:8,}/s without a boot log, "
              f"{KEYLIME_WITH_BOOT_LOG}/s with one")
        print(f"  ratio to Keylime with a boot log: {1 / cached / KEYLIME_WITH_BOOT_LOG:.0f}x")
        print("per step (µs, CPU time, best batch)" + (";  pure-Python loops" if compiled else "") + ":")
        for name, step in bench.steps().items():
            line = f"  {name:55s} {best_seconds(step, max(args.number // 2, 20), args.repeat) * 1e6:8.1f}"
            if compiled:
                with python_loops():
                    line += f"   {best_seconds(step, max(args.number // 2, 20), args.repeat) * 1e6:8.1f}"
            print(line)
        block = bytes(64)
        one_hash = best_seconds(lambda: hashlib.sha256(block).digest(), 20_000, args.repeat)
        calls = bench.hash_calls()
        print(f"for scale: {calls} SHA-256 calls per verification x {one_hash * 1e6:.2f} µs (one hashlib call) "
              f"= {calls * one_hash * 1e6:.0f} µs ({1 / (calls * one_hash):,.0f}/s before any parsing; the compiled "
              "loops hash on the stack for less)")
    return 0


# ----------------------------------------------------------------------------- pytest-benchmark


def test_attestation_rate(benchmark, tmp_path: Path) -> None:  # noqa: ANN001
    bench = Bench(tmp_path)
    benchmark.group = "attestation-verify"
    assert benchmark(bench.verify_one)
    benchmark.extra_info["keylime_with_boot_log_per_s"] = KEYLIME_WITH_BOOT_LOG
    benchmark.extra_info["keylime_without_boot_log_per_s"] = KEYLIME_WITHOUT_BOOT_LOG


if __name__ == "__main__":
    sys.exit(main())
