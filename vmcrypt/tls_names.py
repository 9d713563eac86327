"""The names a loopback HTTPS server's certificate carries, shared by every service that issues one."""

from __future__ import annotations

import ipaddress

from cryptography import x509

LOOPBACK = ipaddress.ip_address("127.0.0.1")


def server_alt_names(host: str) -> list[x509.GeneralName]:
    """subjectAltName entries for a server listening on ``host``: always localhost and 127.0.0.1,
    plus ``host`` itself (as an IP address when it is one, else as a DNS name)."""
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.IPAddress(LOOPBACK)]
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    else:
        if address != LOOPBACK:
            names.append(x509.IPAddress(address))
    return names
