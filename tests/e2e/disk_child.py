"""Child process for the disk tests: run one VM operation on disks, optionally dying part-way.

argv: management home, VM directory, operation (encrypt|decrypt|rekey), kill fraction (0 = run to the
end), signal name (INT|KILL). Prints a JSON line with the bytes transformed and where the run resumed.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

from vmcrypt import disk_stream
from vmcrypt.keys import KeyManager
from vmcrypt.providers.registry import ProviderRegistry
from vmcrypt.vm_encryption import decrypt_vm, encrypt_vm, open_vm, rekey_vm

home, vm_dir, operation, fraction, signame = sys.argv[1:6]
stats: list[disk_stream.StreamStats] = []
real_copy = disk_stream._copy


def observed(*args, **kwargs):  # records what each disk conversion did
    result = real_copy(*args, **kwargs)
    stats.append(result)
    return result


disk_stream._copy = observed
kill_at = float(fraction)


def progress(vm_file, done: int, total: int) -> None:
    if kill_at and vm_file.path.name.endswith(".vmdk") and done >= total * kill_at:
        os.kill(os.getpid(), getattr(signal, f"SIG{signame}"))


keys = KeyManager(ProviderRegistry(Path(home)))
vm = open_vm(vm_dir)
action = {"encrypt": encrypt_vm, "decrypt": decrypt_vm, "rekey": rekey_vm}[operation]
kwargs = {"include_disks": True} if operation == "encrypt" else {}
try:
    action(vm, keys, progress=progress, **kwargs)
except KeyboardInterrupt:
    sys.exit(130)
print(json.dumps({"transformed": sum(s.transformed for s in stats),
                  "resumed_from": max((s.resumed_from for s in stats), default=0)}))
