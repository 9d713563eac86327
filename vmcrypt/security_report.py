"""The security report: every host's last attestation and every key provider's health, as data.

The management service renders it as an HTML page (``vmcrypt.web``) and as JSON
for scripts. Hosts come from the inventory with the results the host attestation
view recorded (``vmcrypt.trust.host_attestation``); nothing is attested here.
Each key provider is probed through the provider interface: ``list_keys()``
answering is healthy, an error is unhealthy with its one-line reason (never key
material, never a secret: only the error's message).
"""

from __future__ import annotations

import datetime
from typing import Any

from vmcrypt.keys import KeyManager
from vmcrypt.trust.host_attestation import summary, view
from vtpm.cli_output import one_line

HEALTHY = "Healthy"
UNHEALTHY = "Unhealthy"


def provider_health(keys: KeyManager) -> list[dict[str, Any]]:
    """One row per configured key provider: id, name, kind, whether it is the default, and its health."""
    keys.registry.default()  # the embedded default exists from first use
    default_id = keys.registry.default_id()
    rows = []
    for config in keys.registry.configs():
        row: dict[str, Any] = {"id": config.provider_id, "name": config.name, "kind": config.kind,
                               "default": config.provider_id == default_id}
        try:
            keys.registry.get(config.provider_id).list_keys()
        except Exception as exc:  # noqa: BLE001 - any failure of a provider is its ill health, reported
            row.update(health=UNHEALTHY, reason=one_line(str(exc)) or type(exc).__name__)
        else:
            row.update(health=HEALTHY, reason="")
        rows.append(row)
    return rows


def security_report(home: Any, hosts: list[str], keys: KeyManager) -> dict[str, Any]:
    """The report of the management home ``home`` for the inventory's ``hosts``."""
    host_rows = view(home, hosts)
    return {"generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "hosts": host_rows, "host_summary": summary(host_rows), "key_providers": provider_health(keys)}
