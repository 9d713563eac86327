"""The native key provider: the embedded default, no server and no prompt needed.

Its KEKs live in one key store file (``keystore.vmc``) in the provider's
directory under the management home. The key store is a vmcrypt container
(AES-XTS-256 + HMAC) whose key is the *master key*: either a random 32-byte
key file (``master.key``, mode 0600, the default) or, opt-in, a key derived
from a passphrase with scrypt (the parameters travel in the container header).

Backups (``export_backup``/``import_backup``) are the same container format
under a passphrase, so a key store can move to another installation.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vmcrypt import container
from vmcrypt.errors import ContainerError, KeyNotFoundError, KeyProviderError, WrongKeyError
from vmcrypt.keyref import DataKey, KeyReference
from vmcrypt.passphrase import passphrase_key, read_passphrase_key
from vmcrypt.providers.base import KeyInfo, KeyProvider, KeyState

MASTER_KEY_FILE = "master.key"
KEYSTORE_FILE = "keystore.vmc"
LOCK_FILE = ".lock"
KEYSTORE_LABEL = "native-keystore"
BACKUP_LABEL = "native-keystore-backup"
KEK_SIZE = 32
STORE_FORMAT = 1

PassphraseSource = Callable[[], bytes]


class NativeKeyProvider(KeyProvider):
    """KEKs in an encrypted, authenticated file under the management home."""

    kind = "native"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        provider_id: str,
        name: str = "native",
        passphrase: PassphraseSource | None = None,
    ) -> None:
        super().__init__(provider_id, name)
        self.directory = Path(directory)
        self._passphrase = passphrase
        self._passphrase_key: DataKey | None = None  # derived once: scrypt is slow on purpose

    # ------------------------------------------------------------------ files

    @property
    def keystore_path(self) -> Path:
        """The encrypted key store file holding every KEK of this provider."""
        return self.directory / KEYSTORE_FILE

    @property
    def master_key_path(self) -> Path:
        """The 0600 file holding the 32-byte master key (absent when the store is under a passphrase)."""
        return self.directory / MASTER_KEY_FILE

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o700, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)

    def _master_key(self, creating: bool) -> DataKey:
        """The key that opens the key store; created (as a key file) on first use."""
        if self.keystore_path.exists():
            reference = container.read_header(self.keystore_path).reference
            if reference.wrap_algorithm.name == "SCRYPT":
                if self._passphrase_key is None or self._passphrase_key.reference != reference:
                    self._passphrase_key = read_passphrase_key(reference, self._require_passphrase())
                return self._passphrase_key
        elif creating and self._passphrase is not None:
            return passphrase_key(self._passphrase(), provider_id=self.provider_id)
        path = self.master_key_path
        if not path.exists():
            if not creating:
                raise KeyProviderError("the native key store has no master key yet", path)
            material = secrets.token_bytes(32)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(material)
                handle.flush()
                os.fsync(handle.fileno())
        material = path.read_bytes()
        if len(material) != 32:
            raise KeyProviderError(f"master key file must hold 32 bytes, found {len(material)}", path)
        return DataKey(material, KeyReference(self.provider_id, "master-key-file"))

    def _require_passphrase(self) -> bytes:
        if self._passphrase is None:
            raise KeyProviderError("this key store is protected by a passphrase; none was given", self.keystore_path)
        return self._passphrase()

    def _load(self) -> dict[str, Any]:
        if not self.keystore_path.exists():
            return {"format": STORE_FORMAT, "provider_id": self.provider_id, "keys": {}}
        master = self._master_key(creating=False)
        try:
            raw = container.read_file(self.keystore_path, master)
        except WrongKeyError:
            raise WrongKeyError(
                "wrong master key: it does not open this key store", self.keystore_path
            ) from None
        return _parse_store(raw, self.keystore_path)

    def _save(self, store: dict[str, Any]) -> None:
        master = self._master_key(creating=True)
        data = json.dumps(store, sort_keys=True).encode()
        container.write_file(self.keystore_path, data, master, label=KEYSTORE_LABEL, mode=0o600)

    def initialise(self) -> None:
        """Create the master key and an empty key store if they do not exist yet."""
        with self._locked():
            if not self.keystore_path.exists():
                self._save(self._load())

    # ------------------------------------------------------------------ interface

    def create_key(self) -> str:
        """Add a random 256-bit KEK to the key store (created with its master key on first use); its id."""
        key_id = str(uuid.uuid4())
        with self._locked():
            store = self._load()
            store["keys"][key_id] = {
                "material": base64.b64encode(secrets.token_bytes(KEK_SIZE)).decode(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "state": KeyState.ACTIVE.value,
            }
            self._save(store)
        return key_id

    def get_key(self, key_id: str) -> bytes:
        """The KEK's material. KeyNotFoundError if the id is unknown or destroyed; WrongKeyError if the master
        key (or passphrase) does not open the key store; KeyProviderError if the store is unreadable."""
        entry = self._load()["keys"].get(key_id)
        if entry is None or entry["state"] != KeyState.ACTIVE.value:
            state = "destroyed" if entry else "unknown"
            raise KeyNotFoundError(f"key {key_id} is {state} in native key provider {self.name!r}")
        return base64.b64decode(entry["material"])

    def destroy_key(self, key_id: str) -> None:
        """Erase the KEK's material and mark it destroyed (it stays listed); KeyNotFoundError if unknown."""
        with self._locked():
            store = self._load()
            entry = store["keys"].get(key_id)
            if entry is None:
                raise KeyNotFoundError(f"key {key_id} is unknown in native key provider {self.name!r}")
            entry.pop("material", None)
            entry["state"] = KeyState.DESTROYED.value
            self._save(store)

    def list_keys(self) -> list[KeyInfo]:
        """Every key in the store, oldest first, without material; an empty list before the first key."""
        return [
            KeyInfo(key_id, entry["created"], KeyState(entry["state"]))
            for key_id, entry in sorted(self._load()["keys"].items(), key=lambda kv: kv[1]["created"])
        ]

    # ------------------------------------------------------------------ high-water marks

    keeps_generations = True

    def record_generation(self, key_id: str, file_role: str, generation: int, *, allow_lower: bool = False) -> None:
        """Kept in the key's entry of the key store (encrypted and authenticated with the KEKs)."""
        if not isinstance(generation, int) or generation < 0:
            raise ValueError(f"a generation is a non-negative integer, not {generation!r}")
        with self._locked():
            store = self._load()
            entry = self._active_entry(store, key_id)
            marks = entry.setdefault("generations", {})
            current = marks.get(file_role)
            if current == generation or (current is not None and generation < current and not allow_lower):
                return
            marks[file_role] = generation
            self._save(store)

    def generation(self, key_id: str, file_role: str) -> int | None:
        """The high-water mark kept in the key's entry, or None; KeyNotFoundError if the key is not active."""
        return self._active_entry(self._load(), key_id).get("generations", {}).get(file_role)

    def _active_entry(self, store: dict[str, Any], key_id: str) -> dict[str, Any]:
        entry = store["keys"].get(key_id)
        if entry is None or entry["state"] != KeyState.ACTIVE.value:
            state = "destroyed" if entry else "unknown"
            raise KeyNotFoundError(f"key {key_id} is {state} in native key provider {self.name!r}")
        return entry

    # ------------------------------------------------------------------ backup

    def export_backup(self, path: str | os.PathLike[str], passphrase: bytes) -> int:
        """Write every active key to ``path``, encrypted under ``passphrase``; return the count."""
        store = self._load()
        active = {k: v for k, v in store["keys"].items() if v["state"] == KeyState.ACTIVE.value}
        backup = {"format": STORE_FORMAT, "provider_id": self.provider_id, "keys": active}
        key = passphrase_key(passphrase, provider_id=self.provider_id)
        container.write_file(path, json.dumps(backup, sort_keys=True).encode(), key, label=BACKUP_LABEL, mode=0o600)
        return len(active)

    def import_backup(self, path: str | os.PathLike[str], passphrase: bytes) -> int:
        """Merge keys from a backup; keys already present are kept. Return how many were added."""
        reference = container.read_header(path).reference
        try:
            raw = container.read_file(path, read_passphrase_key(reference, passphrase))
        except WrongKeyError:
            raise WrongKeyError("wrong passphrase for this key store backup", path) from None
        except ContainerError:
            raise
        backup = _parse_store(raw, path)
        with self._locked():
            store = self._load()
            added = 0
            for key_id, entry in backup["keys"].items():
                if key_id not in store["keys"]:
                    store["keys"][key_id] = entry
                    added += 1
            if added:
                self._save(store)
        return added


def _parse_store(raw: bytes, path: os.PathLike[str] | str) -> dict[str, Any]:
    try:
        store = json.loads(raw)
        if not isinstance(store, dict) or store.get("format") != STORE_FORMAT or not isinstance(store.get("keys"), dict):
            raise ValueError("unexpected layout")
        for key_id, entry in store["keys"].items():
            if not (isinstance(entry, dict) and isinstance(entry.get("created"), str)
                    and entry.get("state") in {s.value for s in KeyState}
                    and (entry["state"] != KeyState.ACTIVE.value or isinstance(entry.get("material"), str))):
                raise ValueError(f"key {key_id}: unexpected entry")
            marks = entry.get("generations", {})
            if not (isinstance(marks, dict) and all(isinstance(v, int) and not isinstance(v, bool) for v in marks.values())):
                raise ValueError(f"key {key_id}: unexpected generations")
        return store
    except (ValueError, RecursionError) as exc:
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)
        raise KeyProviderError(f"key store content is unreadable ({reason})", path) from None
