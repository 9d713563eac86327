"""One management operation on an SQLite inventory against the same on PostgreSQL, measured in the same run.

What is timed (medians over ``--rounds``, the two backends taking turns in a shuffled order so that
machine noise hits both alike), each as the management service does it for one request:
open the home's inventory (with its strict checks), power on or power off of a VM without a
vTPM through ``UserSession`` (the VM's row locked, the change and its audit row in one transaction),
close. PostgreSQL is a real server started here (tests/support/postgres.py), on loopback.

The last line is ``ratio: X.XX``: PostgreSQL median / SQLite median (the price of a shared inventory).
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from support.postgres import start_postgres
from vmcrypt.inventory import ROOT
from vmcrypt.management import Management, UserSession

PASSWORD = "bench-password-1"


def _prepare(home: Path, datastore: Path, url: str | None) -> None:
    m = Management(home, db_url=url)
    try:
        m.inventory.add_user("admin", PASSWORD)
        m.inventory.grant(ROOT, "admin", "Administrator")
        m.inventory.add_datastore("ds", datastore)
        m.login("admin", PASSWORD).create_vm("ds", "vm")
    finally:
        m.close()


def _one(home: Path, url: str | None, on: bool) -> float:
    began = time.perf_counter()
    m = Management(home, create_inventory=False, db_url=url)
    try:
        session = UserSession(m, "admin")  # as the service does for a logged-in token
        (session.power_on if on else session.power_off)("vm")
    finally:
        m.close()
    return time.perf_counter() - began


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    args = parser.parse_args()
    server = start_postgres()
    try:
        with tempfile.TemporaryDirectory() as scratch:
            root = Path(scratch)
            homes = {"sqlite": (root / "sqlite-home", None),
                     "postgresql": (root / "pg-home", server.url(server.create_database()))}
            for name, (home, url) in homes.items():
                home.mkdir()
                _prepare(home, root / f"ds-{name}", url)
            times: dict[str, list[float]] = {name: [] for name in homes}
            for number in range(args.rounds):
                order = list(homes)
                random.shuffle(order)
                for name in order:
                    home, url = homes[name]
                    times[name].append(_one(home, url, number % 2 == 0))
    finally:
        server.stop()
    medians = {name: statistics.median(values) for name, values in times.items()}
    for name, value in medians.items():
        print(f"{name:11s} open + power on/off + audit: median {value * 1000:.2f} ms over {args.rounds} rounds")
    print(f"ratio: {medians['postgresql'] / medians['sqlite']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
