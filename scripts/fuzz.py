#!/usr/bin/env python3
"""Fuzz the vTPM and the VM-encryption file formats, and report counts.

  python scripts/fuzz.py --commands 1000000 --files 50000 --seed 1 --json > report.json

TPM commands: every implemented command (vtpm.core.COMMANDS) is seeded with a
valid-looking frame against a prepared TPM (keys, sessions, NV indices of each
kind, a sequence) and mutated -- bit flips, insertions and deletions, truncation
at every field boundary, commandSize, authorizationSize, TPM2B sizes and list
counts that lie, random handles of every type, session attributes, other and
unimplemented command codes -- then run in-process through Tpm.execute at
localities 0-4, in episodes that restart from a prepared snapshot (some before
Startup). Every response is checked: bytes, a complete header whose size is its
length, a TPM 2.0 tag (a TPM 1.2 answer only to a TPM 1.2 tag), no
TPM_RC_FAILURE (an exception the engine caught: a crash, with its input and
traceback), an error without a body, a success with sessions whose
parameterSize and response sessions add up. A call that spends over 2 s of
CPU is a hang (one that takes over 2 s on the clock with less CPU waited for
a busy machine and is only counted; a successful RSA key generation over 2 s,
inherent in deriving a 3072- or 4096-bit primary from its seed, is listed
apart); a call still running after 60 s is interrupted and reported.

With --tcp the same commands, garbage framing, half commands, split and
pipelined writes, disconnects and bad sizes go to a real `vtpm serve`, which
must answer a valid command after every case.

Files: mutated .nvram (plain and encrypted), encrypted containers of every
home-file kind, .vmx key safes and encryption.data, operation journals, backup
manifests and archives, providers.json and vTPM state go through the readers
that open them; every failure must be a documented error (VmcryptError and
subclasses, StateError, StateStoreError) with a message, and no reader may
write the file it reads.

Exit status: 0 when there is no finding (crash, hang, malformed response,
state failure, unexpected exception, TCP framing or answer problem), 1 otherwise,
2 on a usage error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for entry in (REPO / "tests", REPO):  # the checkout's packages and its test support, before any installed copy
    if str(entry) not in sys.path:
        sys.path.insert(0, str(entry))

from support.fuzzing.files import run_file_campaign  # noqa: E402
from support.fuzzing.tpm import TpmReport, run_tpm_campaign  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="fuzz.py",
        description=__doc__.split("\nExit status")[0],
        epilog="Exit status 0 when nothing was found, 1 when anything was (crash, hang, malformed response, "
               "state failure, unexpected exception, TCP framing problem), 2 on a usage error. Progress goes to "
               "stderr, the report to stdout.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--commands", type=int, default=20000, metavar="N",
                        help="mutated TPM commands to run in-process (default 20000; the full campaign is 1000000)")
    parser.add_argument("--files", type=int, default=2000, metavar="N",
                        help="mutated file inputs to open (default 2000; the full campaign is 50000)")
    parser.add_argument("--seed", type=int, default=1, metavar="S", help="random seed of the mutations (default 1)")
    parser.add_argument("--tcp", action="store_true",
                        help="also fuzz a `vtpm serve` process over its TCP socket (started on a free port)")
    parser.add_argument("--tcp-port", type=int, default=None, metavar="PORT",
                        help="with --tcp: serve on PORT (control on PORT+1) instead of a free pair")
    parser.add_argument("--tcp-cases", type=int, default=None, metavar="N",
                        help="cases to send over TCP (default: commands/500, between 200 and 2000)")
    parser.add_argument("--rsa-bits", type=int, default=2048, choices=(1024, 2048),
                        help="size of the prepared RSA key and cached RSA primary (default 2048)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument("--workdir", type=Path, default=None, metavar="DIR",
                        help="where the file fixtures and the TCP server's state go (default: a temporary directory)")
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    args = parser.parse_args(argv)
    for name in ("commands", "files"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must not be negative")
    if args.tcp_port is not None and not 1024 <= args.tcp_port <= 65534:
        parser.error("--tcp-port must be between 1024 and 65534 (control on PORT+1)")
    if args.tcp_cases is None:
        args.tcp_cases = min(2000, max(200, args.commands // 500))
    return args


class Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.last = 0.0

    def __call__(self, what: str, done: int, total: int, extra: str = "") -> None:
        now = time.monotonic()
        if self.quiet or (now - self.last < 5 and done < total):
            return
        self.last = now
        print(f"fuzz: {what} {done}/{total} {extra}", file=sys.stderr, flush=True)


def run_tcp(args: argparse.Namespace, workdir: Path, progress: Progress) -> dict[str, Any]:
    from support.fuzzing.tcp import run_tcp_campaign
    from support.servers import start_vtpm

    state = Path(tempfile.mkdtemp(prefix="tcp-state-", dir=workdir))
    log = workdir / "tcp-server.log"
    progress("tcp", 0, args.tcp_cases, "starting vtpm serve")
    with start_vtpm(["--state", state, "--startup-clear"], log, port=args.tcp_port) as server:
        report = run_tcp_campaign(server.port, args.tcp_cases, args.seed, rsa_bits=1024)
        alive = server.running()
    text = log.read_text(errors="replace")
    result = report.to_dict()
    result["server_alive"] = alive
    result["server_errors"] = text.count("Traceback")
    result["server_log"] = str(log)
    if not alive:
        result["unresponsive"] += 1
    result["clean"] = report.clean and alive and not result["server_errors"]
    return result


def summary(tpm: TpmReport, files: dict[str, Any], tcp: dict[str, Any] | None, elapsed: float) -> dict[str, Any]:
    t = tpm.to_dict()
    crashes = t["crashes"] + t["state_failures"] + (tcp["crashes"] + tcp["server_errors"] if tcp else 0)
    hangs = t["hangs"] + files["hangs"] + (tcp["unresponsive"] if tcp else 0)
    malformed = t["malformed"] + (tcp["malformed"] + tcp["framing"] if tcp else 0)
    unexpected = files["unexpected"] + files["written"] + files["loaded_state_failures"] + files["empty_messages"]
    return {
        "commands": t["total"] + (tcp["commands"] if tcp else 0),
        "commands_in_process": t["total"],
        "tcp_cases": tcp["cases"] if tcp else 0,
        "per_command_min": t["per_command_min"],
        "implemented_commands": t["implemented_commands"],
        "commands_per_second": t["commands_per_second"],
        "file_inputs": files["total"],
        "crashes": crashes,
        "hangs": hangs,
        "malformed": malformed,
        "unexpected": unexpected,
        "slow_rsa_key_generations": len(t["slow_rsa_key_generations"]),
        "clean": not (crashes or hangs or malformed or unexpected),
        "elapsed_seconds": round(elapsed, 1),
    }


def print_text(report: dict[str, Any]) -> None:
    s, t, f = report["summary"], report["tpm"], report["files"]
    print(f"seed {report['seed']}, {s['elapsed_seconds']} s")
    print(f"TPM commands: {t['total']} in-process ({t['commands_per_second']}/s), "
          f"{t['implemented_commands']} commands, at least {t['per_command_min']} each; "
          f"{t['episodes']} episodes ({t['episodes_before_startup']} before Startup), "
          f"{t['unimplemented_codes']} with an unimplemented code, {t['setup_commands']} setup commands")
    print("  response classes: " + ", ".join(f"{k} {v}" for k, v in t["response_classes"].items()))
    print("  top response codes: " + ", ".join(f"{k} {v}" for k, v in list(t["response_codes"].items())[:10]))
    print(f"  crashes {t['crashes']}, hangs {t['hangs']}, malformed {t['malformed']}, "
          f"state failures {t['state_failures']}, slow RSA key generations {len(t['slow_rsa_key_generations'])}, "
          f"over 2 s waiting for the CPU {t['slow_waiting_for_cpu']}")
    if report["tcp"]:
        c = report["tcp"]
        print(f"TCP: {c['cases']} cases ({c['commands']} mutated commands, {c['responses']} responses, "
              f"{c['reconnects']} reconnects, {c['probes']} probes); crashes {c['crashes']}, malformed "
              f"{c['malformed']}, framing {c['framing']}, unresponsive {c['unresponsive']}, "
              f"server errors {c['server_errors']}, server alive {c['server_alive']}")
    print(f"Files: {f['total']} inputs ({f['inputs_per_second']}/s): " + ", ".join(
        f"{k} {v}" for k, v in f["per_target"].items()))
    print(f"  unexpected {f['unexpected']}, hangs {f['hangs']}, written {f['written']}, "
          f"loaded state failures {f['loaded_state_failures']}, empty messages {f['empty_messages']}")
    findings = t["findings"] + f["findings"] + (report["tcp"]["findings"] if report["tcp"] else [])
    for finding in findings[:40]:
        where = finding.get("command") or finding.get("target") or finding.get("case")
        detail = finding.get("signature") or finding.get("detail") or finding.get("message")
        print(f"FINDING {finding['kind'] if 'kind' in finding else finding.get('exception')}: {where}: {detail}")
        print(f"  input {finding['input_hex'][:200]}{'...' if len(finding['input_hex']) > 200 else ''}")
    print("clean" if s["clean"] else "FINDINGS: see above")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    progress = Progress(args.quiet)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vmcrypt-fuzz-") as scratch:
        workdir = args.workdir or Path(scratch)
        workdir.mkdir(parents=True, exist_ok=True)
        tpm = run_tpm_campaign(
            args.commands, args.seed, rsa_bits=args.rsa_bits,
            progress=lambda r: progress("tpm", r.total, args.commands,
                                        f"({r.total / max(r.elapsed, 1e-9):.0f}/s, crashes {r.crashes}, "
                                        f"hangs {r.hangs}, malformed {r.malformed})"))
        files_dir = Path(tempfile.mkdtemp(prefix="files-", dir=workdir))
        files = run_file_campaign(
            args.files, args.seed, files_dir,
            progress=lambda r: progress("files", r.total, args.files, f"(findings {r.findings_count})")).to_dict()
        tcp = run_tcp(args, workdir, progress) if args.tcp else None
        elapsed = time.perf_counter() - start
        report = {"seed": args.seed, "arguments": {k: str(v) for k, v in vars(args).items()},
                  "summary": summary(tpm, files, tcp, elapsed), "tpm": tpm.to_dict(), "files": files, "tcp": tcp}
        if args.json:
            json.dump(report, sys.stdout, indent=1)
            print()
        else:
            print_text(report)
    return 0 if report["summary"]["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
