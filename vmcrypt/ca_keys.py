"""The management CA of a management home, its private keys sealed by vmcrypt.

Each key is a vmcrypt container (label ``ca-private-key``, mode 0600) whose
DEK is wrapped by a new key of the default key provider: the
``certs.ca.CaKeyStore`` that ``open_ca`` hands the CA.
"""

from __future__ import annotations

import os
from pathlib import Path

from certs.ca import CertificateAuthority
from vmcrypt import container
from vmcrypt.keys import KeyManager

KEY_LABEL = "ca-private-key"


class ContainerKeyStore:
    """The CA's key storage (certs.ca.CaKeyStore): each private key a vmcrypt container, mode 0600, under a new DEK
    wrapped by the default key provider."""
    def __init__(self, keys: KeyManager) -> None:
        self.keys = keys

    def seal(self, path: Path, secret: bytes) -> None:
        """Write ``secret`` to ``path`` as a container under a new data key."""
        container.write_file(path, secret, self.keys.new_data_key(), label=KEY_LABEL, mode=0o600)

    def unseal(self, path: Path) -> bytes:
        """The secret in the container at ``path``; container errors when it is damaged or its key cannot be unwrapped.
        """
        return container.read_file(path, self.keys.header_key)


def open_ca(home: str | os.PathLike[str], keys: KeyManager) -> CertificateAuthority:
    """The CA kept under ``<home>/ca``, its keys sealed through ``keys``."""
    return CertificateAuthority(home, ContainerKeyStore(keys))
