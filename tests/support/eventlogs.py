"""TCG crypto-agile event logs for tests: the one captured from an OVMF + Linux boot, and builders of synthetic ones."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

from vtpm.constants import ALG
from vtpm.eventlog import EventType, bank_name

DATA = Path(__file__).resolve().parents[1] / "data"
# binary_bios_measurements of OVMF (Debian 12) booting Linux 6.1 with swtpm's four banks, and the PCRs the guest read
OVMF_LOG = (DATA / "ovmf-eventlog-4banks.bin").read_bytes()


def guest_pcrs() -> dict[str, dict[int, bytes]]:
    """The PCRs 0-9 the guest of that boot read from sysfs (``PCR bank index hex`` lines)."""
    banks: dict[str, dict[int, bytes]] = {}
    for line in (DATA / "ovmf-eventlog-4banks.pcrs").read_text().splitlines():
        _, bank, index, value = line.split()
        banks.setdefault(bank, {})[int(index)] = bytes.fromhex(value)
    return banks


SIZES = {ALG.SHA1: 20, ALG.SHA256: 32}  # the banks of the synthetic logs


def spec_id(sizes: dict[int, int] = SIZES, *, signature: bytes = b"Spec ID Event03\0", count: int | None = None,
            vendor: bytes = b"") -> bytes:
    """A TCG_EfiSpecIDEventStruct; ``count`` overrides the algorithm count to forge a bad table."""
    body = signature + struct.pack("<IBBBBI", 0, 0, 2, 0, 2, len(sizes) if count is None else count)
    body += b"".join(struct.pack("<HH", alg, size) for alg, size in sizes.items())
    return body + bytes([len(vendor)]) + vendor


def header(spec: bytes | None = None, *, pcr: int = 0, event_type: int = EventType.EV_NO_ACTION) -> bytes:
    """The first entry (SHA-1 format TCG_PCR_EVENT) carrying the Spec ID structure."""
    spec = spec_id() if spec is None else spec
    return struct.pack("<II", pcr, event_type) + bytes(20) + struct.pack("<I", len(spec)) + spec


def event2(pcr: int, event_type: int, data: bytes, digests: dict[int, bytes] | None = None) -> bytes:
    """A TCG_PCR_EVENT2; its digests default to the hash of ``data`` in each bank of SIZES."""
    if digests is None:
        digests = {alg: hashlib.new(bank_name(alg), data).digest() for alg in SIZES}
    body = struct.pack("<III", pcr, event_type, len(digests))
    body += b"".join(struct.pack("<H", alg) + value for alg, value in digests.items())
    return body + struct.pack("<I", len(data)) + data


