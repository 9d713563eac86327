"""The direct parameter readers (vtpm.marshal.fast) against `construct`, command by command.

For every registered command whose parameters have direct readers, parameter
bytes are generated from the declared constructs (valid values, then every
truncation, single-byte changes and a trailing byte), and both parsers must
agree: the same values, or the same response code with the same parameter
number.
"""

from __future__ import annotations

import random
import struct
from typing import Any

import construct as cs
import pytest

import vtpm.engine  # noqa: F401  (registers every command)
from vtpm.constants import ALG, RC
from vtpm.core import COMMANDS, CommandSpec
from vtpm.crypto import HASHES
from vtpm.engine import _parse_params, _parse_params_construct
from vtpm.errors import TpmError
from vtpm.marshal.fast import _counted_parts, compile_reader
from vtpm.marshal.primitives import OneOf, Tpm2b, Tpm2bStruct
from vtpm.marshal.structures import TPML_PCR_SELECTION, PcrSelectBytes, TpmtHa

SAMPLES = 3
FLIPS = 6
FAST = sorted((spec for spec in COMMANDS.values() if spec.readers is not None), key=lambda s: s.code)


def sample(construct: cs.Construct, rng: random.Random) -> bytes:
    """Bytes that mostly parse as ``construct`` (a few values outside what it accepts)."""
    if isinstance(construct, cs.FormatField):
        size = struct.calcsize(construct.fmtstr)
        return rng.randbytes(size) if rng.random() < 0.3 else rng.randrange(4).to_bytes(size, "big")
    if isinstance(construct, Tpm2b):
        high = min(construct.max_size, 40)
        n = rng.randint(construct.min_size, max(construct.min_size, high))
        if rng.random() < 0.05:
            n = construct.max_size + 1
        return n.to_bytes(2, "big") + rng.randbytes(n)
    if isinstance(construct, OneOf):
        if rng.random() < 0.1:
            return rng.randbytes(struct.calcsize(construct.subcon.fmtstr))
        return construct.subcon.build(rng.choice(sorted(construct.allowed)[:4]))
    if isinstance(construct, Tpm2bStruct):
        if construct.optional and rng.random() < 0.3:
            return b"\x00\x00"
        body = sample(construct.subcon, rng)
        return len(body).to_bytes(2, "big") + body
    if isinstance(construct, PcrSelectBytes):
        n = 3 if rng.random() < 0.9 else rng.randrange(6)
        return bytes([n]) + rng.randbytes(n)
    if isinstance(construct, TpmtHa):
        alg = rng.choice([*HASHES, ALG.NULL])
        return alg.to_bytes(2, "big") + rng.randbytes(HASHES[alg].size if alg in HASHES else 0)
    if isinstance(construct, cs.Struct):
        return b"".join(sample(sub.subcon, rng) for sub in construct.subcons)
    parts = _counted_parts(construct)
    assert parts is not None, f"no sample for {construct!r}"
    count, element = parts
    n = rng.randrange(3)
    return n.to_bytes(4, "big") + b"".join(sample(element, rng) for _ in range(n))


def outcome(parse: Any, spec: CommandSpec, raw: bytes) -> tuple:
    try:
        return ("ok", parse(spec, raw))
    except TpmError as exc:
        return ("error", exc.rc, exc.param, exc.handle, exc.session)


def variants(raw: bytes, rng: random.Random) -> list[bytes]:
    out = [raw, raw + b"\x00"] + [raw[:n] for n in range(len(raw))]
    for _ in range(FLIPS if raw else 0):
        at = rng.randrange(len(raw))
        out.append(raw[:at] + bytes([rng.randrange(256)]) + raw[at + 1 :])
    return out


@pytest.mark.parametrize("spec", FAST, ids=lambda spec: spec.code.name)
def test_direct_readers_agree_with_construct(spec: CommandSpec) -> None:
    rng = random.Random(int(spec.code))
    successes = 0
    for _ in range(SAMPLES):
        raw = b"".join(sample(construct, rng) for _, construct in spec.params)
        for data in variants(raw, rng):
            fast, slow = outcome(_parse_params, spec, data), outcome(_parse_params_construct, spec, data)
            assert fast == slow, f"{spec.code.name}: {data.hex()}"
            successes += fast[0] == "ok"
    assert successes, f"{spec.code.name}: no generated parameters parsed"


def test_most_commands_have_direct_readers() -> None:
    """The hot commands must not fall back to construct."""
    names = {spec.code.name for spec in FAST}
    assert {"GetRandom", "PCR_Read", "PCR_Extend", "NV_Read", "NV_Write"} <= names
    assert len(FAST) > len(COMMANDS) // 2


def test_pcr_selection_reader_values() -> None:
    read = compile_reader(TPML_PCR_SELECTION)
    assert read is not None
    raw = b"\x00\x00\x00\x01" + ALG.SHA256.to_bytes(2, "big") + b"\x03\x00\x00\x01"
    value, end = read(raw, 0)
    assert end == len(raw)
    assert value == TPML_PCR_SELECTION.parse(raw)
    assert value[0].hash == ALG.SHA256 and value[0].pcrSelect == b"\x00\x00\x01"
    with pytest.raises(TpmError) as caught:
        read(b"\x00\x00\x00\x09", 0)  # more selections than banks
    assert caught.value.rc == RC.SIZE
