"""Reading a boot log with the trusted images' reference strings gives exactly the facts of the full path."""

from __future__ import annotations

from support.trust import image
from vmcrypt.trust.host_boot import ipl_string
from vmcrypt.trust.images import ComponentKind
from vmcrypt.trust.measurements import (
    CMDLINE_PREFIX,
    SIGNATURE_PREFIX,
    VERSION_PREFIX,
    read_boot_log,
    reference_strings,
)
from vtpm.constants import ALG
from vtpm.eventlog import EventLogWriter, EventType, parse_event_log


def test_reference_strings_give_the_facts_of_the_full_path_for_good_and_forged_strings() -> None:
    manifest = image().manifest
    vibs = [c.name for c in manifest.components if c.kind == ComponentKind.VIB]
    strings = reference_strings([manifest])
    host = [(VERSION_PREFIX, manifest.version), (CMDLINE_PREFIX, manifest.kernel_cmdline)]
    host += [(SIGNATURE_PREFIX, f"{name} valid") for name in vibs]
    assert len(strings) == len(host) and all(ipl_string(*s)[0] in strings for s in host)

    writer = EventLogWriter([ALG.SHA1, ALG.SHA256])
    for prefix, value in host:
        writer.measure(8, EventType.EV_IPL, *ipl_string(prefix, value))
    forged, _ = ipl_string(SIGNATURE_PREFIX, f"{vibs[0]} valid")  # a known string whose digest is another's
    writer.measure(8, EventType.EV_IPL, forged, b"esx-base invalid")
    writer.measure(8, EventType.EV_IPL, *ipl_string(SIGNATURE_PREFIX, f"{vibs[1]} invalid"))  # not a reference
    writer.measure(8, EventType.EV_IPL, *ipl_string(VERSION_PREFIX, "9.9.9"))  # a second version
    writer.measure(8, EventType.EV_IPL, b"no-space\0")
    events = parse_event_log(writer.to_bytes()).events

    fast, full = read_boot_log(events, strings), read_boot_log(events)
    assert fast == full
    assert fast.version == "9.9.9" and fast.signature_checks[vibs[1]] == "invalid"
    assert fast.problems == full.problems and len(fast.problems) == 3
    assert "data does not match its sha256 digest" in fast.problems[0]
    assert fast.problems[1].startswith("version: the event log names a version twice")
    assert "is not a 'prefix: value' string" in fast.problems[2]
