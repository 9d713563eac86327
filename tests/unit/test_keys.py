"""Key hierarchy and the native key provider.

Bad inputs tried: a wrong KEK for unwrap, a damaged wrapped DEK, malformed
key safes (wrong scheme, missing field, bad base64, unknown wrap), a wrong
master key file, a short master key file, a tampered key store, a wrong
backup passphrase, an empty passphrase, unknown and destroyed key ids.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from vmcrypt import container
from vmcrypt.errors import KeyNotFoundError, KeyProviderError, VmcryptError, WrongKeyError
from vmcrypt.keyref import DataKey, KeyReference, WrapAlgorithm
from vmcrypt.keys import KeyManager, unwrap_dek, wrap_dek
from vmcrypt.passphrase import passphrase_key, read_passphrase_key
from vmcrypt.providers.native import NativeKeyProvider
from vmcrypt.providers.registry import ProviderRegistry


def test_wrap_unwrap_rfc3394_and_5649() -> None:
    kek, dek = os.urandom(32), os.urandom(32)
    algorithm, wrapped = wrap_dek(kek, dek)
    assert algorithm == WrapAlgorithm.AES_KW and len(wrapped) == 40
    assert unwrap_dek(kek, KeyReference("p", "k", algorithm, wrapped)) == dek
    odd = os.urandom(20)
    algorithm, wrapped = wrap_dek(kek, odd)
    assert algorithm == WrapAlgorithm.AES_KWP
    assert unwrap_dek(kek, KeyReference("p", "k", algorithm, wrapped)) == odd


def test_rfc3394_known_answer() -> None:
    # RFC 3394 section 4.6: 256-bit key data with a 256-bit KEK
    kek = bytes.fromhex("000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F")
    dek = bytes.fromhex("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F")
    expected = bytes.fromhex("28C9F404C4B810F4CBCCB35CFB87F8263F5786E2D80ED326CBC7F0E71A99F43BFB988B9B7A02DD21")
    assert wrap_dek(kek, dek) == (WrapAlgorithm.AES_KW, expected)


def test_unwrap_with_wrong_kek_or_damaged_wrap() -> None:
    kek, dek = os.urandom(32), os.urandom(32)
    _, wrapped = wrap_dek(kek, dek)
    with pytest.raises(WrongKeyError):
        unwrap_dek(os.urandom(32), KeyReference("p", "k", WrapAlgorithm.AES_KW, wrapped))
    damaged = bytes([wrapped[0] ^ 1]) + wrapped[1:]
    with pytest.raises(WrongKeyError):
        unwrap_dek(kek, KeyReference("p", "k", WrapAlgorithm.AES_KW, damaged))


def test_keysafe_round_trip_and_malformed() -> None:
    ref = KeyReference("prov-1", "key/with&odd=chars", WrapAlgorithm.AES_KW, os.urandom(40))
    text = ref.to_keysafe()
    assert KeyReference.from_keysafe(text) == ref
    for bad in ["", "other?x=1", "vmcrypt-keysafe-v1", "vmcrypt-keysafe-v1?provider=a&key=b&wrap=aes-kw",
                "vmcrypt-keysafe-v1?provider=a&key=b&wrap=rot13&dek=AA==",
                "vmcrypt-keysafe-v1?provider=a&key=b&wrap=aes-kw&dek=%%%"]:
        with pytest.raises(VmcryptError):
            KeyReference.from_keysafe(bad)


def test_data_key_repr_has_no_secret() -> None:
    dek = os.urandom(32)
    key = DataKey(dek, KeyReference("p", "k"))
    assert dek.hex() not in repr(key) and repr(dek) not in repr(key)


def test_default_native_provider_created_on_first_use(home: Path, keys: KeyManager) -> None:
    data_key = keys.new_data_key()
    provider = keys.provider()
    assert isinstance(provider, NativeKeyProvider) and provider.name == "native"
    assert keys.registry.default_id() == provider.provider_id
    assert [k.key_id for k in provider.list_keys()] == [data_key.reference.key_id]
    # a fresh manager (no cache) unwraps the same DEK
    assert KeyManager(ProviderRegistry(home)).unlock(data_key.reference).dek == data_key.dek
    for path in (provider.master_key_path, provider.keystore_path, keys.registry.config_path):
        assert path.stat().st_mode & 0o777 == 0o600, path
    assert provider.directory.stat().st_mode & 0o777 == 0o700


def test_key_store_holds_no_key_in_clear(keys: KeyManager) -> None:
    provider = keys.provider()
    key_id = provider.create_key()
    kek = provider.get_key(key_id)
    raw = provider.keystore_path.read_bytes()
    assert kek not in raw and base64.b64encode(kek) not in raw and key_id.encode() not in raw


def test_destroy_and_unknown_keys(keys: KeyManager) -> None:
    provider = keys.provider()
    key_id = provider.create_key()
    provider.destroy_key(key_id)
    with pytest.raises(KeyNotFoundError, match="destroyed"):
        provider.get_key(key_id)
    with pytest.raises(KeyNotFoundError, match="unknown"):
        provider.get_key("no-such-key")
    with pytest.raises(KeyNotFoundError):
        provider.destroy_key("no-such-key")
    assert [k.state.value for k in provider.list_keys()] == ["destroyed"]


def test_wrong_master_key_is_refused_and_store_kept(home: Path, keys: KeyManager) -> None:
    data_key = keys.new_data_key()
    provider = keys.provider()
    store_before = provider.keystore_path.read_bytes()
    provider.master_key_path.write_bytes(os.urandom(32))
    fresh = KeyManager(ProviderRegistry(home))
    with pytest.raises(WrongKeyError) as info:
        fresh.unlock(data_key.reference)
    assert "wrong master key" in str(info.value) and str(provider.keystore_path) in str(info.value)
    assert provider.keystore_path.read_bytes() == store_before
    provider.master_key_path.write_bytes(b"short")
    with pytest.raises(KeyProviderError, match="32 bytes"):
        KeyManager(ProviderRegistry(home)).unlock(data_key.reference)


def test_tampered_key_store_is_refused(home: Path, keys: KeyManager) -> None:
    data_key = keys.new_data_key()
    store = keys.provider().keystore_path
    blob = bytearray(store.read_bytes())
    blob[-40] ^= 0x04
    store.write_bytes(bytes(blob))
    with pytest.raises(VmcryptError):
        KeyManager(ProviderRegistry(home)).unlock(data_key.reference)


def test_passphrase_protected_store(home: Path) -> None:
    registry = ProviderRegistry(home, passphrase=lambda: b"correct horse battery staple")
    manager = KeyManager(registry)
    data_key = manager.new_data_key()
    provider = manager.provider()
    assert not provider.master_key_path.exists()
    assert container.read_header(provider.keystore_path).reference.wrap_algorithm == WrapAlgorithm.SCRYPT
    again = KeyManager(ProviderRegistry(home, passphrase=lambda: b"correct horse battery staple"))
    assert again.unlock(data_key.reference).dek == data_key.dek
    with pytest.raises(WrongKeyError):
        KeyManager(ProviderRegistry(home, passphrase=lambda: b"wrong")).unlock(data_key.reference)
    with pytest.raises(KeyProviderError, match="passphrase"):
        KeyManager(ProviderRegistry(home)).unlock(data_key.reference)


def test_passphrase_key_parameters_travel_in_reference() -> None:
    key = passphrase_key(b"pw", provider_id="p", log2_n=10)
    assert read_passphrase_key(key.reference, b"pw").dek == key.dek
    assert read_passphrase_key(key.reference, b"pW").dek != key.dek
    with pytest.raises(VmcryptError):
        passphrase_key(b"", provider_id="p")


def test_export_import_backup(tmp_path: Path, keys: KeyManager) -> None:
    data_key = keys.new_data_key()
    provider = keys.provider()
    backup = tmp_path / "keys.backup"
    assert provider.export_backup(backup, b"backup-pass") == 1
    assert backup.stat().st_mode & 0o777 == 0o600
    assert provider.get_key(data_key.reference.key_id) not in backup.read_bytes()

    other_home = tmp_path / "other-home"
    other = NativeKeyProvider(other_home / "native", data_key.reference.provider_id)
    with pytest.raises(WrongKeyError, match="wrong passphrase"):
        other.import_backup(backup, b"nope")
    assert other.import_backup(backup, b"backup-pass") == 1
    assert other.import_backup(backup, b"backup-pass") == 0  # idempotent
    assert other.get_key(data_key.reference.key_id) == provider.get_key(data_key.reference.key_id)


def test_registry_rejects_corrupt_config_and_unknown_provider(home: Path, keys: KeyManager) -> None:
    keys.new_data_key()
    with pytest.raises(KeyProviderError, match="no key provider"):
        keys.registry.get("missing")
    with pytest.raises(KeyProviderError, match="already exists"):
        keys.registry.add_native("native")
    second = keys.registry.add_native("second", make_default=True)
    assert keys.registry.default().provider_id == second.provider_id
    (home / "providers.json").write_text("{not json")
    with pytest.raises(KeyProviderError, match="unreadable"):
        ProviderRegistry(home).configs()
    config = json.loads('{"default": null, "providers": []}')
    assert config["providers"] == []
