"""Inputs the fuzz campaign (scripts/fuzz.py) found crashing a reader or the engine, kept as regression tests.

Each test replays the campaign's reproducer (or the smallest command sequence
that reaches the same state) and checks the documented answer: a TPM response
code for the engine, one of the project's error types with a message for the
file readers.
"""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest

from vmcrypt import container
from vmcrypt.backup import BackupError, Manifest, verify_backup
from vmcrypt.errors import CorruptError, KeyProviderError, VmcryptError, VmError
from vmcrypt.home_json import read_home_json
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.keys import KeyManager
from vmcrypt.nvram import SECTION_EFI, Nvram, default_nvram
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm import FileKind, VmFile, VmHome, VmSpec, create_vm
from vmcrypt.vm_encryption import Journal, encrypt_vm, read_vmx
from vmcrypt.vmx import ENCRYPTED_DATA, KEYSAFE, VmxConfig
from vtpm import wire
from vtpm.constants import ALG, CC, RC, RH
from vtpm.engine import Tpm
from vtpm.errors import TpmError
from vtpm.objects import LoadedObject, Public
from vtpm.state import StateError, TpmState
from vtpm.marshal.objects import TPMT_PUBLIC

from support.fuzzing import seeds
from support.fuzzing.frames import AuthEntry, Frame, check_response

OFF_CURVE = (b"\x01" * 32, b"\x02" * 32)


@pytest.fixture
def tpm() -> Tpm:
    engine = Tpm()
    assert wire.response_code(engine.execute(0, wire.STARTUP_CLEAR)) == RC.SUCCESS
    return engine


def run(tpm: Tpm, command: bytes) -> bytes:
    response = tpm.execute(0, command)
    assert check_response(command, response) is None, response.hex()
    return response


def describe(response: bytes) -> str:
    return wire.describe_rc(wire.response_code(response))


# ----------------------------------------------------------------------------- the engine


def test_load_external_refuses_an_ecc_point_off_the_curve(tpm: Tpm) -> None:
    """MakeCredential with such a key loaded crashed in cryptography (ValueError: point not on the curve)."""
    template = seeds.public_area(ALG.ECC, seeds.A.USER_WITH_AUTH | seeds.A.DECRYPT | seeds.A.RESTRICTED,
                                 sym=seeds.AES_128_CFB, unique=OFF_CURVE)
    loaded = bytes(Frame(CC.LoadExternal, [], None, seeds.writer().b(b"").sized(template).u32(RH.NULL)).build()[0])
    assert describe(run(tpm, loaded)) == "TPM_RC_ECC_POINT parameter 2"
    make_credential = Frame(CC.MakeCredential, [0x80000000], None,
                            seeds.writer().b(bytes(32)).b(b"\x00\x0b" + bytes(32))).build()[0]
    assert describe(run(tpm, bytes(make_credential))) == "TPM_RC_REFERENCE_H0"


def test_load_external_refuses_an_rsa_modulus_of_the_wrong_size(tpm: Tpm) -> None:
    template = seeds.public_area(ALG.RSA, seeds.A.USER_WITH_AUTH | seeds.A.SIGN_ENCRYPT, bits=2048, unique=b"\x03" * 100)
    command = Frame(CC.LoadExternal, [], None, seeds.writer().b(b"").sized(template).u32(RH.NULL)).build()[0]
    assert describe(run(tpm, bytes(command))) == "TPM_RC_KEY parameter 2"


def test_a_public_key_that_is_not_one_is_a_tpm_error_not_an_exception() -> None:
    """Objects can reach the table by other roads (Import of a crafted public area): public_key() must not raise
    cryptography's ValueError."""
    area = seeds.public_area(ALG.ECC, seeds.A.USER_WITH_AUTH | seeds.A.DECRYPT, unique=OFF_CURVE).bytes()
    obj = LoadedObject(Public.from_container(TPMT_PUBLIC.parse(area)), None, RH.NULL, b"")
    with pytest.raises(TpmError) as caught:
        obj.public_key()
    assert caught.value.rc == RC.ECC_POINT


def test_a_symmetric_key_as_signer_is_a_scheme_error(tpm: Tpm) -> None:
    """Quote (Certify, GetTime, NV_Certify ...) with an AES key read a signing scheme it does not have
    (AttributeError: scheme). Campaign reproducer: Quote with the persistent AES key 0x81000004."""
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.aes_key()).b(b"").count(0)
    response = run(tpm, bytes(Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0]))
    handle = int.from_bytes(response[10:14], "big")
    quote = bytes.fromhex("8002000000290000015880000000000000094000000900000100000000001000000001000b03010000")
    assert int.from_bytes(quote[10:14], "big") == handle
    assert describe(run(tpm, quote)) == "TPM_RC_SCHEME parameter 2"


@pytest.fixture
def prepared(tpm: Tpm) -> seeds.Artifacts:
    """The campaign's prepared TPM: persistent ECDSA signer 0x81000002, HMAC key 0x81000005, ..."""
    return seeds.build_snapshot(lambda command: run(tpm, command), rsa_bits=1024)


def test_verify_signature_with_a_null_or_unhashed_signature_is_a_scheme_or_hash_error(
        tpm: Tpm, prepared: seeds.Artifacts) -> None:
    """The full campaign's crash: VerifySignature with sigAlg TPM_ALG_NULL read the hash of a signature that is
    not there (AttributeError); an HMAC signature naming an unknown hash looked that hash up (KeyError)."""
    reproducer = bytes.fromhex("80010000003200000177810000020020c4982bb7c8ec497997d8560eef5b324faefe51873f4a8f45e7"
                               "63ed77a82f2b5a0010")
    assert describe(run(tpm, reproducer)) == "TPM_RC_SCHEME parameter 2"
    params = seeds.writer().b(bytes(32)).u16(ALG.HMAC).u16(0x1234)
    assert describe(run(tpm, bytes(Frame(CC.VerifySignature, [seeds.HMAC_KEY], None, params).build()[0]))) == \
        "TPM_RC_HASH parameter 2"
    params = seeds.writer().b(prepared.signed_digest).raw(prepared.signature)  # a good one still verifies
    assert describe(run(tpm, bytes(Frame(CC.VerifySignature, [seeds.SIGNER], None, params).build()[0]))) == \
        "TPM_RC_SUCCESS"


# ----------------------------------------------------------------------------- VM-encryption files


def test_a_damaged_efi_variable_store_is_a_vm_error() -> None:
    """Reading the variables of a .nvram whose EFIV section was cut short raised construct's StreamError."""
    nvram = default_nvram()
    nvram.sections[SECTION_EFI] = nvram.sections[SECTION_EFI][:-3]
    parsed = Nvram.parse(nvram.build())
    with pytest.raises(VmError, match="EFI variable store"):
        parsed.efi_variables  # noqa: B018
    nvram.sections[SECTION_EFI] = bytes.fromhex("00000001" + "00" * 16 + "00000007" + "0003" + "414243" + "00000000")
    with pytest.raises(VmError, match="EFI variable store"):  # a UTF-16 name of an odd number of bytes
        Nvram.parse(nvram.build()).efi_variables  # noqa: B018


def test_a_header_whose_fields_run_past_its_length_is_corrupt() -> None:
    """The compiled header parser raised struct.error when the header length cut a field short."""
    blob = bytearray(container.encrypt_bytes(b"hello", DataKey(bytes(32), KeyReference("p", "k")), label="x"))
    length = container.parse_header(bytes(blob)).header_length
    blob[10:14] = (length - 40).to_bytes(4, "big")
    with pytest.raises(CorruptError, match="damaged header"):
        container.parse_header(bytes(blob))


@pytest.mark.parametrize("text", [
    "vmcrypt-keysafe-v1?provider=a&key",  # a field without "=": parse_qsl's ValueError escaped
    "vmcrypt-keysafe-v1?&&",
    "vmcrypt-keysafe-v1?provider=p&key=k&wrap=aes-kw",
])
def test_a_malformed_key_safe_query_is_a_vmcrypt_error(text: str) -> None:
    with pytest.raises(VmcryptError, match="malformed key safe: .+"):
        KeyReference.from_keysafe(text)


def test_a_key_safe_that_is_not_text_is_a_vmcrypt_error() -> None:
    """A journal whose target was a number reached from_keysafe and raised AttributeError."""
    with pytest.raises(VmcryptError, match="a key safe is text"):
        KeyReference.from_keysafe(5)  # type: ignore[arg-type]


@pytest.fixture
def vm(tmp_path: Path) -> VmHome:
    return create_vm(tmp_path / "vm", VmSpec("fuzz"))


def test_a_vmx_that_is_not_utf8_is_a_vm_error(vm: VmHome) -> None:
    """read_vmx raised UnicodeDecodeError for a .vmx with a byte that is not UTF-8."""
    vm.vmx_path.write_bytes(vm.vmx_path.read_bytes().replace(b"TRUE", b"TRU\xff", 1))
    with pytest.raises(VmError, match="not a text file"):
        read_vmx(vm, None)


@pytest.mark.parametrize("body", [
    b'{"settings": [["a", {}]], "order": []}',  # a value of the wrong type (AttributeError in VmxConfig)
    b'{"settings": [], "order": [{}]}',  # an unhashable key in the order (TypeError)
    b'{"settings": true, "order": []}',
    b'{"order": []}',  # KeyError
    b"[]",
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError
])
def test_encrypted_vmx_settings_of_the_wrong_shape_are_a_vm_error(vm: VmHome, keys: KeyManager, body: bytes) -> None:
    encrypt_vm(vm, keys)
    clear = VmxConfig.parse(vm.vmx_path.read_text())
    key = keys.unlock(KeyReference.from_keysafe(clear[KEYSAFE]))
    clear[ENCRYPTED_DATA] = base64.b64encode(container.encrypt_bytes(body, key, label="vmx-encryption-data")).decode()
    vm.vmx_path.write_text(clear.render())
    with pytest.raises(VmError, match="encryption.data is malformed"):
        read_vmx(vm, keys)


@pytest.mark.parametrize("body", [
    b"[]",  # AttributeError: 'list' object has no attribute 'get'
    b"1.5",
    b'{"format": 1, "operation": "encrypt", "target": 5, "include_disks": false, "started": "now"}',
    b'{"format": 1, "operation": {}, "target": null, "include_disks": false, "started": "now"}',
    b'{"format": 1, "operation": "encrypt", "target": null, "include_disks": false, "started": []}',
    b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
])
def test_a_journal_of_the_wrong_shape_is_a_vm_error(vm: VmHome, body: bytes) -> None:
    vm.journal_path.write_bytes(body)
    with pytest.raises(VmError, match="the operation journal is unreadable"):
        Journal.load(vm)


@pytest.mark.parametrize("body", [
    b"1.5",  # AttributeError: 'float' object has no attribute 'pop'
    b'{"format": 1, "files": 7}',
    b'{"format": 1, "vm": 5, "created": "", "encrypted": false, "provider_id": null, "key_id": null, "vtpm": false,'
    b' "disks_included": false, "files": []}',
    b'{"format": 1, "vm": "v", "created": "", "encrypted": false, "provider_id": null, "key_id": null, "vtpm": false,'
    b' "disks_included": false, "files": [{"name": 1, "size": 2, "sha256": "00"}]}',
    b"[" * 100_000 + b"]" * 100_000,
])
def test_a_manifest_of_the_wrong_shape_is_a_backup_error(tmp_path: Path, body: bytes) -> None:
    with pytest.raises(BackupError, match="the manifest is not readable"):
        Manifest.from_json(body, tmp_path / "backup.tar")


def _archive(path: Path, *members: tarfile.TarInfo, fmt: int = tarfile.USTAR_FORMAT) -> Path:
    with tarfile.open(path, "w", format=fmt) as tar:
        for member in members:
            tar.addfile(member, io.BytesIO(b"{}") if member.isfile() else None)
    return path


def test_a_manifest_that_is_a_link_is_a_backup_error(tmp_path: Path) -> None:
    """extractfile() gave None for a symlink (AttributeError) and raised KeyError for a dangling hard link."""
    for kind in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE):
        member = tarfile.TarInfo("manifest.json")
        member.type, member.linkname = kind, ""
        with pytest.raises(BackupError, match="not a regular file"):
            verify_backup(_archive(tmp_path / f"{kind!r}.tar", member))


def test_an_archive_with_a_bad_pax_number_is_a_backup_error(tmp_path: Path) -> None:
    """tarfile raised ValueError for a PAX GNU.sparse.size that is not an integer."""
    member = tarfile.TarInfo("manifest.json")
    member.size = 2
    member.pax_headers = {"GNU.sparse.size": "1e9"}
    with pytest.raises(BackupError, match="the archive cannot be read"):
        verify_backup(_archive(tmp_path / "pax.tar", member, fmt=tarfile.PAX_FORMAT))


@pytest.mark.parametrize("config", [
    b"[]",  # TypeError: list indices must be integers
    b'{"providers": []}',  # KeyError: 'default'
    b'{"default": null, "providers": {}}',
    b'{"default": 7, "providers": []}',
    b'{"default": null, "providers": [{"name": "n", "kind": "native"}]}',  # TypeError in ProviderConfig
    b'{"default": null, "providers": [{"provider_id": "p", "name": ["n"], "kind": "native"}]}',
    b'{"default": null, "providers": [{"provider_id": "p", "name": "n", "kind": "native", "x": 1}]}',
    b'{"default": null, "providers": [' * 30_000,
])
def test_a_provider_configuration_of_the_wrong_shape_is_a_key_provider_error(home: Path, config: bytes) -> None:
    (home / "providers.json").write_bytes(config)
    registry = ProviderRegistry(home)
    for read in (registry.configs, registry.default_id, lambda: registry.get("n")):
        with pytest.raises(KeyProviderError, match="provider configuration is unreadable"):
            read()


@pytest.mark.parametrize("settings", [
    {},  # KeyError: 'servers'
    {"servers": 5, "ca": "a", "cert": "b", "key": "c"},  # TypeError: 'int' object is not iterable
    {"servers": [5], "ca": "a", "cert": "b", "key": "c"},  # AttributeError in parse_server
    {"servers": ["h:1"], "ca": "a", "cert": "b", "key": "c", "timeout": "soon"},  # ValueError in float()
    {"servers": ["h:1"], "ca": "a", "cert": "b", "key": "c", "timeout": [1]},  # TypeError in float()
])
def test_kmip_settings_of_the_wrong_shape_are_a_key_provider_error(home: Path, settings: dict) -> None:
    entry = {"provider_id": "p", "name": "kmip", "kind": "kmip", "settings": settings}
    (home / "providers.json").write_text(json.dumps({"default": None, "providers": [entry]}))
    with pytest.raises(KeyProviderError, match="provider configuration is unreadable .*KMIP settings are malformed"):
        ProviderRegistry(home).get("kmip")


def test_a_home_json_document_nested_too_deeply_is_a_vm_error(vm: VmHome, keys: KeyManager) -> None:
    """A .vmss whose JSON nests 100 000 arrays deep raised RecursionError."""
    target = VmFile(vm.directory / "fuzz.vmss", FileKind.SUSPEND)
    target.path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    with pytest.raises(VmError, match="nested too deeply"):
        read_home_json(vm, target, keys, 1, "suspend state")


@pytest.mark.parametrize("content", [b"[]", b"[" * 100_000 + b"]" * 100_000])
def test_a_native_key_store_of_the_wrong_shape_is_a_key_provider_error(tmp_path: Path, content: bytes) -> None:
    """The key store is authenticated, but a store written by something else must still be refused cleanly."""
    from vmcrypt.providers.native import _parse_store

    with pytest.raises(KeyProviderError, match="key store content is unreadable"):
        _parse_store(content, tmp_path / "keystore.vmc")


def test_policy_ticket_for_a_hierarchy_that_is_none_is_a_value_error(tpm: Tpm) -> None:
    """PolicyTicket looked the proof of the ticket's hierarchy up without checking it (KeyError: 1073741959,
    the campaign's ticket named hierarchy 0x40000087)."""
    session = seeds.prep_start_session(lambda c: run(tpm, c), 0x01)[0]
    assert session == 0x03000000
    ticket = bytes(Frame(CC.PolicyTicket, [session], None, seeds.ticket(
        seeds.writer().b(bytes(8)).b(b"").b(b"").b(b"\x00\x0b" + bytes(32)), 0x8025, 0x40000087, bytes(32))).build()[0])
    assert describe(run(tpm, ticket)) == "TPM_RC_VALUE parameter 5"
    ticket = bytes(Frame(CC.PolicyTicket, [session], None, seeds.ticket(
        seeds.writer().b(bytes(8)).b(b"").b(b"").b(b"\x00\x0b" + bytes(32)), 0x8025, RH.LOCKOUT, bytes(32))).build()[0])
    assert describe(run(tpm, ticket)) == "TPM_RC_VALUE parameter 5"


@pytest.mark.parametrize("bits", [1024, 3072])
def test_an_ordinary_rsa_key_loads_and_signs(tpm: Tpm, bits: int) -> None:
    """Create generates ordinary RSA keys with OpenSSL's prime search (an RSA-3072 Create took over 2 s before)."""
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.ecc_storage()).b(b"").count(0)
    parent = int.from_bytes(run(tpm, bytes(Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0]))[10:14], "big")
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.rsa_key(bits)).b(b"").count(0)
    body = wire.parse_response(run(tpm, bytes(Frame(CC.Create, [parent], [AuthEntry()], params).build()[0]))).parameters()
    private_size = int.from_bytes(body[:2], "big")
    public_end = 2 + private_size + 2 + int.from_bytes(body[2 + private_size : 4 + private_size], "big")
    loaded = run(tpm, bytes(Frame(CC.Load, [parent], [AuthEntry()], seeds.writer().raw(body[:public_end])).build()[0]))
    key = int.from_bytes(loaded[10:14], "big")
    for scheme in (ALG.RSASSA, ALG.RSAPSS):
        params = seeds.ticket(seeds.asym_scheme(seeds.writer().b(bytes(32)), scheme, ALG.SHA256))
        assert describe(run(tpm, bytes(Frame(CC.Sign, [key], [AuthEntry()], params).build()[0]))) == "TPM_RC_SUCCESS"


# ----------------------------------------------------------------------------- vTPM state


def _state_doc(tpm: Tpm) -> dict:
    """The serialized state of a TPM with an NV index, a persistent key and saved PCRs, as JSON."""
    run(tpm, wire.nv_define_space(0x01000001, 0x2060006, 16))  # owner/auth read and write
    run(tpm, wire.nv_write(0x01000001, bytes(16)))
    params = seeds.writer().sized(seeds.sensitive_create()).sized(seeds.ecc_storage()).b(b"").count(0)
    handle = int.from_bytes(run(tpm, bytes(Frame(CC.CreatePrimary, [RH.OWNER], [AuthEntry()], params).build()[0]))[10:14], "big")
    run(tpm, bytes(Frame(CC.EvictControl, [RH.OWNER, handle], [AuthEntry()], seeds.writer().u32(0x81000001)).build()[0]))
    run(tpm, wire.shutdown(1))
    return json.loads(tpm.state.to_bytes())


def _set(doc: dict, path: str, value: object) -> bytes:
    target = doc["state"]
    *parents, last = path.split("/")
    for step in parents:
        target = target[int(step) if isinstance(target, list) else step]
    target[int(last) if isinstance(target, list) else last] = value
    return json.dumps(doc).encode()


@pytest.mark.parametrize(("path", "value"), [
    ("max_tries", float("inf")),  # GetCapability failed building TPM_PT_MAX_AUTH_FAIL (FormatFieldError)
    ("max_tries", "1000"),
    ("nv/0/data", 7),  # NV_Read sliced an int (TypeError)
    ("nv/0/index", 16777217.5),  # GetCapability shifted a float handle (TypeError)
    ("nv/0/index", float("inf")),  # OverflowError
    ("pcr_banks", None),  # Startup iterated None
    ("pcr_banks", [11, 11]),
    ("persistent/2164260865/qualified_name", {"hex": "00" * 68}),  # ReadPublic: 68 bytes exceed TPM2B_NAME
    ("persistent/2164260865/public", {"hex": "0023"}),
    ("persistent/2164260865/hierarchy", 0x40000007),
    ("saved/pcrs/11", [{"hex": "00" * 32}]),  # Startup(STATE) restores 16 PCRs
    ("orderly", "sideways"),
    ("owner/policy_alg", 0x1234),
    ("eh_proof", {"hex": "00"}),
    ("clock_safe", "yes"),
])
def test_a_state_field_of_the_wrong_type_is_a_state_error(tpm: Tpm, path: str, value: object) -> None:
    """These states loaded, and the engine then answered TPM_RC_FAILURE on the first command that read the field."""
    raw = _set(_state_doc(tpm), path, value)
    with pytest.raises(StateError, match="TPM state is damaged"):
        TpmState.from_bytes(raw)


@pytest.mark.parametrize("raw", [
    b'{"format": "vtpm-state", "version": 1, "state": "x"}',  # AttributeError: 'str' object has no attribute 'pop'
    b'{"format": "vtpm-state", "version": 1, "state": {"nv": 5}}',
    b"[" * 100_000 + b"]" * 100_000,  # RecursionError
])
def test_a_state_document_of_the_wrong_shape_is_a_state_error(raw: bytes) -> None:
    with pytest.raises(StateError):
        TpmState.from_bytes(raw)


def test_the_state_a_tpm_writes_still_loads(tpm: Tpm) -> None:
    doc = _state_doc(tpm)
    state = TpmState.from_bytes(json.dumps(doc).encode())
    assert state.to_bytes() == tpm.state.to_bytes()


def test_a_manifest_claiming_a_huge_size_is_refused_before_it_is_read(tmp_path: Path) -> None:
    """A sparse manifest member (PAX GNU.sparse.size) of 10**20 bytes made tarfile raise OverflowError while
    reading it; a merely large one would have been read into memory, NUL bytes of its holes included."""
    for size in ("99999999999999999999", str(1 << 40)):
        member = tarfile.TarInfo("manifest.json")
        member.size = 2
        member.pax_headers = {"GNU.sparse.size": size, "GNU.sparse.map": "0,2"}
        with pytest.raises(BackupError, match="more than a manifest holds"):
            verify_backup(_archive(tmp_path / f"{size}.tar", member, fmt=tarfile.PAX_FORMAT))
    member = tarfile.TarInfo("manifest.json")
    member.size = 2
    member.pax_headers = {"size": "99999999999999999999"}  # OverflowError while seeking past it
    with pytest.raises(BackupError, match="cannot be read"):
        verify_backup(_archive(tmp_path / "size.tar", member, fmt=tarfile.PAX_FORMAT))


def test_a_sparse_member_claiming_a_huge_size_is_refused_without_reading_it(tmp_path: Path) -> None:
    """verify_backup hashed a sparse member whose holes claimed 10**20 bytes: it never finished."""
    manifest = {"format": 1, "vm": "v", "created": "", "encrypted": False, "provider_id": None, "key_id": None,
                "vtpm": False, "disks_included": False,
                "files": [{"name": "v.vmx", "size": 10**20, "sha256": "00" * 32}]}
    raw = json.dumps(manifest).encode()
    first = tarfile.TarInfo("manifest.json")
    first.size = len(raw)
    second = tarfile.TarInfo("vm/v.vmx")
    second.size = 2
    second.pax_headers = {"GNU.sparse.size": str(10**20), "GNU.sparse.map": "0,2"}
    path = tmp_path / "sparse.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(first, io.BytesIO(raw))
        tar.addfile(second, io.BytesIO(b"{}"))
    with pytest.raises(BackupError, match="unexpected archive member vm/v.vmx"):
        verify_backup(path)
    manifest["files"][0]["size"] = 3  # a plain member whose manifest size lies
    raw = json.dumps(manifest).encode()
    first.size, second.pax_headers = len(raw), {}
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(first, io.BytesIO(raw))
        tar.addfile(second, io.BytesIO(b"{}"))
    with pytest.raises(BackupError, match="does not match its manifest entry"):
        verify_backup(path)
