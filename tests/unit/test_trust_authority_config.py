"""The Trust Authority's configuration gate and audit chain, in-process (one test: users are scrypt-hashed):
only TrustedAdmins change it, every change and refusal is audited, an edited audit line breaks the chain."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from vmcrypt.inventory import Inventory
from vmcrypt.trust.authority import TrustAdminDenied, TrustAuthority, TrustAuthorityError

PASSWORD = "a long enough password"


@pytest.fixture
def ta(tmp_path: Path) -> TrustAuthority:
    authority = TrustAuthority(tmp_path)
    authority.enable("ta1")
    authority.add_admin("alice", password=PASSWORD)
    with Inventory(tmp_path, create=False) as inventory:
        inventory.add_user("bob", PASSWORD)
    return authority


def test_only_trusted_admins_configure_and_every_outcome_is_audited(ta: TrustAuthority) -> None:
    before = ta.config_path.read_bytes()
    with pytest.raises(TrustAdminDenied, match="not a member of TrustedAdmins"):
        ta.admin("bob", PASSWORD)
    with pytest.raises(TrustAdminDenied, match="bad user name or password"):
        ta.admin("alice", "wrong password here")
    admin = ta.admin("alice", PASSWORD)
    with pytest.raises(TrustAuthorityError, match="not a PEM certificate"):
        admin.add_manufacturer_ca(b"garbage")
    with pytest.raises(TrustAuthorityError, match="malformed"):
        admin.import_hosts({"cluster": "c", "hosts": []})
    with pytest.raises(TrustAuthorityError, match="version 9.9 is not trusted"):
        admin.remove_image("9.9")
    with pytest.raises(TrustAuthorityError, match="already enabled"):
        ta.enable("ta1")
    assert ta.config_path.read_bytes() == before  # nothing changed by a refusal
    ta_cert = ta.ca.cert_path.read_bytes()
    admin.add_manufacturer_ca(ta_cert)
    assert len(ta.config()["manufacturer_cas"]) == 1
    outcomes = [(e["actor"], e["outcome"]) for e in ta.audit.entries()]
    # enable, then alice added to TrustedAdmins (the fixture), then the sessions
    assert outcomes == [("local administrator", "ok"), ("local administrator", "ok"), ("bob", "denied"), ("alice", "denied"), ("alice", "failed"),
                        ("alice", "failed"), ("alice", "failed"), ("alice", "ok")]
    assert oct(ta.config_path.stat().st_mode & 0o777) == "0o600"
    assert oct(ta.audit.path.stat().st_mode & 0o777) == "0o600"
    # an edited line (a denial made to look like success) breaks the chain
    assert ta.audit.verify()
    lines = ta.audit.path.read_bytes().splitlines()
    entry = json.loads(lines[2])  # bob's denial
    assert entry["outcome"] == "denied"
    entry["outcome"] = "ok"
    lines[2] = json.dumps(entry, sort_keys=True).encode()
    ta.audit.path.write_bytes(b"\n".join(lines) + b"\n")
    assert not ta.audit.verify()




def test_the_chain_holds_across_a_line_longer_than_one_read(tmp_path: Path) -> None:
    """The previous line is hashed whole, however long it is (a line left by an older version, a long reason)."""
    from vmcrypt.trust.authority import AuditLog
    log = AuditLog(tmp_path / "audit.jsonl")
    log.append("a", "first", "ok")
    long_line = {**log.entries()[0], "detail": "x" * 200_000, "prev": __import__("hashlib").sha256(
        log.path.read_bytes().rstrip(b"\n")).hexdigest()}
    with open(log.path, "ab") as handle:
        handle.write(json.dumps(long_line, sort_keys=True).encode() + b"\n")
    log.append("b", "after the long line", "ok")
    log.append("c", "a long detail", "refused", "y" * 100_000)
    assert log.verify() and len(log.entries()) == 4
    assert len(log.entries()[-1]["detail"]) < 5000
