"""PCR 7's Secure Boot databases read from a boot log and checked against a trusted image.

Inputs tried: the databases a trusted host measures; db with one more key; db without the vendor
key; the vendor key revoked in dbx; PK empty (setup mode); KEK not measured; a variable whose data
does not match its digest; signature lists that do not parse (truncated head, list size past the
end, a body not a whole number of entries, a SHA-256 list with the wrong entry size); a certificate
list (its entries are hashed).
"""

from __future__ import annotations

import hashlib
import struct

import pytest

from vmcrypt.trust.host_boot import (
    EFI_GLOBAL_VARIABLE,
    FOREIGN_DB_KEY,
    SIGNATURE_OWNER,
    secure_boot_variables,
    signature_list,
    variable_data,
)
from vmcrypt.trust.images import make_image
from vmcrypt.trust.measurements import BootFacts, check_secure_boot_databases, read_boot_log, signature_list_entries
from vtpm.constants import ALG
from vtpm.eventlog import Event, EventType

IMAGE = make_image("8.0.2")
VENDOR = hashlib.sha256(IMAGE.manifest.vendor_key).digest()
X509 = bytes.fromhex("a159c0a5e494a74a87b5ab155c2bf072")  # EFI_CERT_X509_GUID, as stored


def _events(variables: list[bytes], *, corrupt: int | None = None) -> list[Event]:
    events = []
    for number, data in enumerate(variables):
        digest = hashlib.sha256(data).digest()
        if number == corrupt:
            digest = bytes(32)
        events.append(Event(number, 0, 7, int(EventType.EV_EFI_VARIABLE_DRIVER_CONFIG), {int(ALG.SHA256): digest},
                            data))
    return events


def _facts(extra_db: tuple[bytes, ...] = (), **replace: bytes) -> BootFacts:
    variables = secure_boot_variables(IMAGE, True, extra_db)
    names = ["SecureBoot", "PK", "KEK", "db", "dbx"]
    for name, value in replace.items():
        variables[names.index(name)] = variable_data(name, EFI_GLOBAL_VARIABLE, value)
    return read_boot_log(_events(variables))


def test_a_trusted_hosts_databases_pass() -> None:
    facts = _facts()
    assert facts.secure_boot is True and facts.problems == []
    assert facts.secure_boot_databases["db"] == (VENDOR,)
    assert set(facts.secure_boot_databases) == {"PK", "KEK", "db", "dbx"}
    assert check_secure_boot_databases(facts, IMAGE.manifest) == []


def test_one_more_key_in_db_is_named() -> None:
    reasons = check_secure_boot_databases(_facts((FOREIGN_DB_KEY,)), IMAGE.manifest)
    assert reasons == [f"Secure Boot: db trusts {FOREIGN_DB_KEY.hex()[:16]}..., which trusted image 8.0.2 "
                       "does not name"]


def test_db_without_the_vendor_key_dbx_revoking_it_and_an_empty_pk() -> None:
    facts = _facts(db=signature_list([FOREIGN_DB_KEY]), dbx=signature_list([VENDOR]), PK=b"")
    assert check_secure_boot_databases(facts, IMAGE.manifest) == [
        "Secure Boot: PK is empty (setup mode: any key can be enrolled)",
        "Secure Boot: db does not hold trusted image 8.0.2's vendor key",
        f"Secure Boot: db trusts {FOREIGN_DB_KEY.hex()[:16]}..., which trusted image 8.0.2 does not name",
        "Secure Boot: dbx revokes trusted image 8.0.2's vendor key",
    ]


def test_a_variable_not_measured_or_not_matching_its_digest_is_missing() -> None:
    variables = secure_boot_variables(IMAGE, True)
    without_kek = [v for v in variables if "KEK".encode("utf-16-le") not in v[32:40]]
    assert check_secure_boot_databases(read_boot_log(_events(without_kek)), IMAGE.manifest) == [
        "Secure Boot: the event log has no KEK variable (PCR 7)"]
    facts = read_boot_log(_events(variables, corrupt=3))  # db
    assert facts.problems == ["event log: event 3 (PCR 7 EV_EFI_VARIABLE_DRIVER_CONFIG) db data does not match "
                              "its sha256 digest"]
    assert "db" not in facts.secure_boot_databases


@pytest.mark.parametrize("data", [
    signature_list([VENDOR])[:20],  # the list head cut short
    signature_list([VENDOR])[:-1],  # ListSize past the end
    signature_list([VENDOR]) + b"\0" * 28,  # a second head claiming nothing
    bytes(16) + struct.pack("<III", 28 + 40, 0, 48) + bytes(40),  # a body of 40 bytes, entries of 48
    bytes.fromhex("2616c4c14c509240aca941f936934328") + struct.pack("<III", 28 + 40, 0, 40) + bytes(40),
])
def test_signature_lists_that_do_not_parse(data: bytes) -> None:
    assert signature_list_entries(data) is None
    facts = _facts(db=data)
    assert "db" not in facts.secure_boot_databases
    assert facts.problems and facts.problems[0].endswith("db is not a list of EFI_SIGNATURE_LISTs")


def test_certificate_entries_are_hashed_and_lists_follow_each_other() -> None:
    certificate = b"0\x82" + bytes(100)
    x509_list = X509 + struct.pack("<III", 28 + 16 + len(certificate), 0, 16 + len(certificate)) \
        + SIGNATURE_OWNER.bytes_le + certificate
    assert signature_list_entries(signature_list([VENDOR]) + x509_list) == (
        VENDOR, hashlib.sha256(certificate).digest())
    assert signature_list_entries(b"") == ()
