"""The .vmx and .nvram formats.

Bad inputs tried: a .vmx line without quotes, without '='; an .nvram with a
bad magic, an unknown version, a truncated section, trailing garbage.
"""

from __future__ import annotations

import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from vmcrypt.errors import VmError
from vmcrypt.nvram import SECTION_VTPM, EfiVariable, Nvram, default_nvram
from vmcrypt.vmx import VmxConfig, escape_value, is_sensitive, unescape_value


@given(st.text())
def test_vmx_escape_round_trip(value: str) -> None:
    escaped = escape_value(value)
    assert '"' not in escaped and "\n" not in escaped
    assert unescape_value(escaped) == value


def test_vmx_parse_render_is_identity_for_canonical_files() -> None:
    text = '.encoding = "UTF-8"\ndisplayName = "a |22quoted|22 name"\nguestinfo.x = "1|7C2"\n'
    config = VmxConfig.parse(text)
    assert config["DISPLAYNAME"] == 'a "quoted" name' and config["guestinfo.x"] == "1|2"
    assert config.render() == text


def test_vmx_case_insensitive_keys_keep_spelling_and_order() -> None:
    config = VmxConfig.parse('memSize = "1"\nnumvcpus = "2"\n')
    config["MEMSIZE"] = "4"
    assert config.items() == [("memSize", "4"), ("numvcpus", "2")]
    del config["memsize"]
    assert "memSize" not in config and len(config) == 1


@pytest.mark.parametrize("line", ['memSize = 4', 'memSize "4"', '= "x"'])
def test_vmx_rejects_malformed_lines(line: str) -> None:
    with pytest.raises(VmError, match="line 2"):
        VmxConfig.parse(f'.encoding = "UTF-8"\n{line}\n', "x.vmx")


def test_sensitive_split() -> None:
    assert is_sensitive("guestinfo.password") and is_sensitive("annotation") and is_sensitive("machine.id")
    assert not is_sensitive("virtualHW.version") and not is_sensitive("encryption.keySafe")
    assert not is_sensitive("nvram")
    clear, sensitive = VmxConfig.parse('displayName = "v"\nguestinfo.a = "s"\n').split_sensitive()
    assert list(clear) == ["displayName"] and list(sensitive) == ["guestinfo.a"]


def test_nvram_round_trip_and_sections() -> None:
    nvram = default_nvram()
    names = [v.name for v in nvram.efi_variables]
    assert "PlatformLang" in names and "BootOrder" in names
    nvram.vtpm_state = b"\x01\x02tpm-state"
    raw = nvram.build()
    again = Nvram.parse(raw)
    assert again.vtpm_state == b"\x01\x02tpm-state"
    assert again.efi_variables == nvram.efi_variables
    again.efi_variables = [*again.efi_variables, EfiVariable(uuid.uuid4(), "Custom", 7, b"\0" * 3)]
    assert Nvram.parse(again.build()).efi_variables[-1].name == "Custom"
    again.vtpm_state = None
    assert SECTION_VTPM not in Nvram.parse(again.build()).sections


def test_nvram_keeps_unknown_sections() -> None:
    nvram = default_nvram()
    nvram.sections[b"FUTR"] = b"from a newer build"
    assert Nvram.parse(nvram.build()).sections[b"FUTR"] == b"from a newer build"


@pytest.mark.parametrize("damage", ["magic", "version", "truncated", "trailing"])
def test_nvram_rejects_damage(damage: str) -> None:
    raw = bytearray(default_nvram().build())
    if damage == "magic":
        raw[0] ^= 1
    elif damage == "version":
        raw[9] = 2
    elif damage == "truncated":
        raw = raw[:-3]
    else:
        raw += b"x"
    with pytest.raises(VmError, match="not a valid .nvram"):
        Nvram.parse(bytes(raw), "vm.nvram")
