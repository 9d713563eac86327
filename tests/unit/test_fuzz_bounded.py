"""A bounded fuzz campaign on every run: about 20 000 mutated TPM commands across every implemented command
code, and 2 000 mutated VM-encryption files, with a fixed seed; nothing may be found.

The full campaign (scripts/fuzz.py, a million commands and 50 000 files) runs the same code; what it finds
becomes a regression test in test_fuzz_regressions.py. The seed is fixed so a failure here reproduces: the
assertion message carries the findings with their inputs.
"""

from __future__ import annotations

import json
from pathlib import Path

from vtpm.core import COMMANDS

from support.fuzzing import seeds
from support.fuzzing.files import run_file_campaign
from support.fuzzing.frames import AuthEntry, Frame, writer
from support.fuzzing.tpm import command_name, run_tpm_campaign

SEED = 20240611
COMMANDS_RUN = 11_000  # 100 per implemented command (110): the deck deals every command once per round
FILES_RUN = 1_200  # 100 per file target


def test_every_implemented_command_has_a_seed() -> None:
    assert seeds.missing_seeds() == []


def test_frames_lay_out_commands_as_the_wire_module_does() -> None:
    from vtpm import wire

    frame = Frame(0x17E, [0x80000000], [AuthEntry(hmac=b"pw")], writer().u16(11).b(b"xyz").count(0))
    assert bytes(frame.build()[0]) == wire.build_command(
        0x17E, [0x80000000], bytes.fromhex("000b0003") + b"xyz" + bytes(4), wire.password_session(b"pw"))


def test_tpm_commands_fuzzed_in_process_find_nothing() -> None:
    report = run_tpm_campaign(COMMANDS_RUN, SEED, rsa_bits=1024, rsa_rate=0.25)
    result = report.to_dict()
    assert report.total == COMMANDS_RUN
    assert set(result["per_command"]) == {command_name(code) for code in COMMANDS}
    assert result["per_command_min"] >= COMMANDS_RUN // len(COMMANDS)
    assert sum(result["response_classes"].values()) == COMMANDS_RUN
    assert result["episodes_before_startup"] >= 1 and result["unimplemented_codes"] > 0
    assert set(result["localities"]) == {"0", "1", "2", "3", "4"}
    assert report.clean, json.dumps(result["findings"], indent=1)[:20_000]


def test_files_fuzzed_through_their_readers_find_nothing(tmp_path: Path) -> None:
    report = run_file_campaign(FILES_RUN, SEED, tmp_path)
    result = report.to_dict()
    assert report.total == FILES_RUN
    assert len(result["per_target"]) == 12 and min(result["per_target"].values()) == FILES_RUN // 12
    assert sum(result["outcomes"].values()) == FILES_RUN
    assert all(result["outcomes"].get(f"{target}/refused") for target in result["per_target"])
    assert report.findings_count == 0, json.dumps(result["findings"], indent=1)[:20_000]


def test_a_crash_is_reported_with_its_input_and_traceback(monkeypatch) -> None:
    """The oracle itself: a handler that raises is a crash finding carrying the input hex and the traceback."""
    from vtpm.constants import CC
    from vtpm.core import COMMANDS as REGISTRY

    spec = REGISTRY[CC.ReadClock]

    def broken(tpm, cmd):  # noqa: ANN001, ANN202
        raise KeyError("planted")

    monkeypatch.setitem(REGISTRY, CC.ReadClock, spec.__class__(**{**spec.__dict__, "handler": broken}))
    report = run_tpm_campaign(960, SEED, rsa_bits=1024, rsa_rate=0)
    assert report.crashes > 0 and not report.clean
    finding = next(f for f in report.findings if f.kind == "crash")
    assert finding.signature.startswith("KeyError at vtpm/") and "planted" in finding.traceback
    assert bytes.fromhex(finding.input_hex)[6:10] == CC.ReadClock.to_bytes(4, "big")
