"""`python -m vtpm`: serve a virtual TPM 2.0 to real clients, and inspect stored vTPM state.

This wires the engine to a state store and to a transport. Which stores the
command line can name comes from a ``StoreOptions``: by itself vtpm knows plain
state directories (``--state DIR``); the `vtpm` command that is installed
(``python -m vmcrypt.vtpm_command``) passes its own, which add the encrypted
stores (``--key-file``, ``--vm``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any, Protocol

from vtpm import host as host_daemon
from vtpm import wire
from vtpm.cli_output import add_json_option, package_version, print_error, quiet_broken_pipe
from vtpm.constants import NT, TPMA_NV
from vtpm.crypto import HASHES
from vtpm.engine import Tpm
from vtpm.journal_store import JournaledStore
from vtpm.server import socket_command, swtpm_options
from vtpm.server.device import TpmDevice
from vtpm.server.sockets import MssimServer, SwtpmServer
from vtpm.server.state_lock import lock_for
from vtpm.state import TpmState
from vtpm.storage import PlainStateStore, StateStore, StateStoreError

ENGINE_COMMAND = "the `vtpm` command (python -m vmcrypt.vtpm_command)"


class StoreOptions(Protocol):
    """The options that name a state store, and how to open the store they name."""

    #: exceptions of the stores, reported as ``error: vtpm COMMAND: ...`` with exit status 1
    failures: tuple[type[Exception], ...]

    def add_global_options(self, parser: argparse.ArgumentParser) -> None:
        """Options before the subcommand that every store-opening command shares."""
    def add_store_options(self, command: argparse.ArgumentParser, where: Any) -> None:
        """Options of `serve` and `info`; ``where`` is the group of mutually exclusive ones (``--state``)."""
    def open(self, args: argparse.Namespace) -> StateStore:
        """The store the parsed options name; one of ``failures`` (or StateStoreError) when it cannot be opened."""


class _NeedsEngine(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        parser.error(f"{option_string} (encrypted state) needs {ENGINE_COMMAND}; "
                     "python -m vtpm serves plain --state directories only")


class PlainStoreOptions:
    """``--state DIR`` only; ``--vm`` and ``--key-file`` are refused with a pointer to the `vtpm` command."""

    failures: tuple[type[Exception], ...] = ()

    def add_global_options(self, parser: argparse.ArgumentParser) -> None:
        """Accept ``--home`` (hidden) so that command lines written for the `vtpm` command still parse."""
        parser.add_argument("--home", help=argparse.SUPPRESS)  # only --vm uses it; accepted as before

    def add_store_options(self, command: argparse.ArgumentParser, where: Any) -> None:
        """Hidden ``--vm`` and ``--key-file`` that stop with a usage error pointing to the `vtpm` command, which opens
        encrypted stores."""
        where.add_argument("--vm", action=_NeedsEngine, help=argparse.SUPPRESS)
        command.add_argument("--key-file", action=_NeedsEngine, help=argparse.SUPPRESS)

    def open(self, args: argparse.Namespace) -> StateStore:
        """The plain store of ``--state DIR``; StateStoreError without ``--state``, or for a directory that does not
        exist."""
        if not args.state:
            raise StateStoreError("give --state DIR")
        refuse_missing_state(args)
        return PlainStateStore(args.state)


def load_or_manufacture(store: StateStore) -> tuple[TpmState, bool]:
    """The state in ``store`` and False, or a newly manufactured TPM, saved there first, and True."""
    state = store.load()
    if state is not None:
        return state, False
    state = TpmState.manufacture()
    store.save(state.to_bytes())
    return state, True


def cmd_serve(args: argparse.Namespace, store: StateStore) -> int:
    """`vtpm serve`: load (or manufacture) the TPM, serve it over the swtpm or mssim protocol until SIGTERM, SIGINT or a
    client's terminate, then save its state; StateStoreError when no port or socket is given."""
    lock = lock_for(store)
    if lock is not None:
        lock.acquire_or_raise()  # one server per state directory; held until the process ends
    # Journaled (the default): each change is one record and one fdatasync before the response;
    # the full state is rewritten when idle, when the journal is full and on stop.
    journaled = None if args.no_journal or not hasattr(store, "journal_binding") else JournaledStore(store)  # type: ignore[arg-type]
    state, created = load_or_manufacture(journaled or store)
    tpm = Tpm(state, persist=journaled or store.save)
    if args.startup_clear:
        response = tpm.execute(0, wire.STARTUP_CLEAR)
        if response[6:10] != bytes(4):
            print(f"error: vtpm serve: Startup(CLEAR) failed: 0x{response[6:10].hex()}", file=sys.stderr)
            return 1
    stop = threading.Event()
    device = TpmDevice(tpm, on_terminate=stop.set)
    if args.protocol == "mssim":
        if args.port is None:
            raise StateStoreError("the mssim protocol needs --port")
        server: Any = MssimServer(device, host=args.host, port=args.port)
        where = f"mssim tcp {args.host}:{args.port} (platform {args.port + 1})"
    else:
        if args.port is None and args.unix is None:
            raise StateStoreError("give --port P and/or --unix PATH")
        server = SwtpmServer(device, host=args.host, port=args.port, unix_path=args.unix)
        where = " and ".join(
            w for w in (
                f"swtpm tcp {args.host}:{args.port} (ctrl {args.port + 1})" if args.port is not None else "",
                f"swtpm unix {args.unix} (ctrl {args.unix}.ctrl)" if args.unix else "",
            ) if w
        )
    server.start()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print(f"vtpm: {'manufactured a new TPM in' if created else 'loaded'} {store.describe()}", file=sys.stderr)
    print(f"vtpm: serving on {where}", file=sys.stderr, flush=True)
    while not stop.wait(0.2):
        if server.terminated.is_set():
            break
        if journaled is not None:
            with device.lock:
                journaled.fold_if_idle()
    server.close()
    device.stop()
    tpm.flush_state()
    if journaled is not None:
        journaled.close()
    print("vtpm: stopped, state saved", file=sys.stderr)
    return 0


def describe_state(state: TpmState) -> dict[str, Any]:
    """What is stored, without any secret: no seeds, proofs, auth values or NV contents."""
    indices = []
    for index in sorted(state.nv.values(), key=lambda i: i.index):
        kind = NT(index.kind).name.lower() if index.kind in NT._value2member_map_ else str(index.kind)
        flags = [f.name.lower() for f in TPMA_NV if f.name and f != TPMA_NV.TPM_NT_MASK and index.attributes & f]
        indices.append({
            "index": f"0x{index.index:08x}",
            "type": kind,
            "size": index.data_size,
            "name_alg": HASHES[index.name_alg].name if index.name_alg in HASHES else index.name_alg,
            "attributes": flags,
            "written": bool(index.attributes & TPMA_NV.WRITTEN),
            "auth_set": bool(index.auth_value),
        })
    return {
        "pcr_banks": [HASHES[b].name for b in state.pcr_banks],
        "pcr_banks_pending": [HASHES[b].name for b in state.pcr_banks_pending] if state.pcr_banks_pending else None,
        "nv_indices": indices,
        "persistent_handles": [f"0x{h:08x}" for h in sorted(getattr(state, "persistent", {}) or {})],
        "reset_count": state.reset_count,
        "restart_count": state.restart_count,
        "last_shutdown": state.orderly,
        "saved_state": state.saved is not None,
        "hierarchy_auth_set": {
            "owner": bool(state.owner.auth), "endorsement": bool(state.endorsement.auth), "lockout": bool(state.lockout.auth),
        },
        "dictionary_attack": {"failed_tries": state.failed_tries, "max_tries": state.max_tries,
                              "recovery_time": state.recovery_time, "lockout_recovery": state.lockout_recovery},
        "disable_clear": state.disable_clear,
    }


def cmd_info(args: argparse.Namespace, store: StateStore) -> int:
    """`vtpm info`: what a stored TPM holds, without secrets, as text or JSON; StateStoreError when the store has no
    TPM."""
    state = store.load()
    if state is None:
        raise StateStoreError(f"{store.describe()}: no TPM state stored there")
    info = {"store": store.describe(), **describe_state(state)}
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"state          {info['store']}")
    print(f"PCR banks      {', '.join(info['pcr_banks'])}")
    print(f"last shutdown  {info['last_shutdown']}{' (saved state present)' if info['saved_state'] else ''}")
    print(f"resets         {info['reset_count']} (restarts {info['restart_count']})")
    da = info["dictionary_attack"]
    print(f"DA lockout     {da['failed_tries']}/{da['max_tries']} failures")
    print(f"persistent     {', '.join(info['persistent_handles']) or 'none'}")
    print(f"NV indices     {len(info['nv_indices']) or 'none'}")
    for entry in info["nv_indices"]:
        print(f"  {entry['index']}  {entry['type']:8} {entry['size']:5} B  {'written' if entry['written'] else 'unwritten'}"
              f"  {'|'.join(entry['attributes'])}")
    return 0


SOCKET_DESCRIPTION = """Serve a vTPM with swtpm's command line, as libvirt and QEMU start `swtpm socket`:
options take swtpm's key=value lists. Without --server the TPM's data channel
comes over the control channel (CMD_SET_DATAFD), as QEMU passes it."""


def _socket_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int | None:
    """Check `vtpm socket`'s swtpm-style options (usage errors exit 2); an exit status for the options
    that only print (--print-capabilities, --version), else None with ``args.socket`` filled in."""
    if args.print_capabilities:
        print(socket_command.capabilities_json())
        return 0
    if args.version:
        print(f"vtpm socket (swtpm-compatible TPM 2.0 emulator) {socket_command.version()}")
        return 0
    if not args.tpm2:
        parser.error("only TPM 2.0 is emulated: pass --tpm2 (TPM 1.2 is not supported)")
    try:
        if args.tpmstate is not None:
            args.state = str(swtpm_options.parse_tpmstate(args.tpmstate).directory)
        elif not getattr(args, "vm", None):
            parser.error("give --tpmstate dir=DIR (or, with the installed vtpm command, --vm VMX)")
        server = swtpm_options.parse_server(args.server) if args.server is not None else None
        if args.port is not None:
            if server is not None:
                parser.error("give --port or --server, not both")
            server = swtpm_options.parse_server(f"type=tcp,port={args.port}")
        ctrl = swtpm_options.parse_ctrl(args.ctrl) if args.ctrl is not None else None
        if ctrl is None and server is None:
            parser.error("give --ctrl (and/or --server): there is nothing to listen on")
        args.socket = socket_command.SocketOptions(
            ctrl=ctrl, server=server,
            flags=swtpm_options.parse_flags(args.flags),
            migration=swtpm_options.parse_migration(args.migration),
            terminate=args.terminate, daemon=args.daemon,
            pid=swtpm_options.parse_pid(args.pid) if args.pid is not None else None,
            log=swtpm_options.parse_log(args.log) if args.log is not None else None,
        )
    except swtpm_options.OptionError as exc:
        parser.error(str(exc))
    socket_command.configure_logging(args.socket.log, args.verbose)
    return None


def cmd_socket(args: argparse.Namespace, store: StateStore) -> int:
    """`vtpm socket`: serve the store with swtpm's `socket` command line; its failures also go into ``--log`` when one
    is given."""
    try:
        return socket_command.run(args.socket, store)
    except (StateStoreError, OSError) as exc:
        if args.socket.log is not None:  # also into --log, where libvirt looks (stderr gets it from main)
            logging.getLogger("vtpm.socket").error("%s", exc)
        raise


def _check_store_named(args: argparse.Namespace) -> str | None:
    if not args.state and not getattr(args, "vm", None):
        return "give --state DIR" + (" or --vm VMX" if hasattr(args, "vm") and args.vm is None else "")
    return None


def _check_serve(args: argparse.Namespace) -> str | None:
    """`serve`'s usage errors (exit 2), before any state is opened."""
    if problem := _check_store_named(args):
        return problem
    if args.protocol == "mssim" and args.port is None:
        return "the mssim protocol needs --port"
    if args.protocol == "swtpm" and args.port is None and args.unix is None:
        return "give --port P and/or --unix PATH"
    return None


def refuse_missing_state(args: argparse.Namespace) -> None:
    """A --state directory that does not exist is made only with --create: a typo must not become a new TPM.

    For `serve` and `info`; `socket` and `host` keep swtpm's --tpmstate rules.
    """
    if getattr(args, "command", None) not in ("serve", "info"):
        return
    if args.state and not getattr(args, "create", False) and not os.path.isdir(args.state):
        hint = " (give --create to manufacture a new TPM there)" if hasattr(args, "create") else ""
        raise StateStoreError(f"{args.state}: no such state directory{hint}")


def build_parser(stores: StoreOptions) -> argparse.ArgumentParser:
    """The `vtpm` argument parser, with the store options ``stores`` adds."""
    parser = argparse.ArgumentParser(prog="vtpm", description="Serve and inspect virtual TPM 2.0 devices.",
                                     epilog="Exit status: 0 success, 1 failed, 2 usage error.")
    parser.add_argument("--version", action="version", version=f"vtpm {package_version()}")
    add_json_option(parser)
    stores.add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add_state_options(sub: argparse.ArgumentParser) -> None:
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--state", metavar="DIR", help="state directory (an empty one gets a new TPM)")
        stores.add_store_options(sub, where)

    serve = commands.add_parser("serve", help="serve a vTPM on a socket", description="Serve a vTPM to TPM clients.")
    add_state_options(serve)
    serve.add_argument("--create", action="store_true",
                       help="create the --state directory if it does not exist (a new TPM); without it a "
                       "missing directory is refused, so a typo never manufactures a new TPM")
    serve.add_argument("--port", type=int, help="TCP data port P (control/platform on P+1)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--unix", metavar="PATH", help="Unix data socket PATH (control on PATH.ctrl)")
    serve.add_argument("--protocol", choices=["swtpm", "mssim"], default="swtpm",
                       help="swtpm (data + control socket, as QEMU uses) or mssim (Microsoft simulator; default swtpm)")
    serve.add_argument("--startup-clear", action="store_true", help="run TPM2_Startup(CLEAR) before serving")
    serve.add_argument("--no-journal", action="store_true",
                       help="rewrite the whole state after every change instead of journaling it")
    serve.add_argument("-v", "--verbose", action="store_true", help="log each connection problem")
    serve.set_defaults(func=cmd_serve, check=_check_serve, prints_json=False)

    sock = commands.add_parser("socket", help="serve a vTPM the way libvirt/QEMU start `swtpm socket`",
                               description=SOCKET_DESCRIPTION)
    where = sock.add_mutually_exclusive_group()
    where.add_argument("--tpmstate", metavar="dir=DIR[,mode=0600][,lock]",
                       help="state directory (or backend-uri=dir://DIR); created with a new TPM if empty")
    stores.add_store_options(sock, where)
    sock.add_argument("--tpm2", action="store_true", help="emulate a TPM 2.0 (required: no TPM 1.2)")
    sock.add_argument("--ctrl", metavar="type=unixio,path=P[,mode=0600]|type=tcp,port=N[,bindaddr=A]",
                      help="control channel (also uid=,gid=, fd=, clientfd=, terminate)")
    sock.add_argument("--server", metavar="type=tcp,port=N[,bindaddr=A]|type=unixio,path=P",
                      help="data channel (also mode=, uid=, gid=, fd=, disconnect); default: passed by CMD_SET_DATAFD")
    sock.add_argument("-p", "--port", type=int, help="TCP data port (same as --server type=tcp,port=N)")
    sock.add_argument("--flags", metavar="not-need-init,startup-clear",
                      help="not-need-init, startup-clear|startup-state|startup-none, disable-auto-shutdown")
    sock.add_argument("--migration", metavar="incoming[,release-lock-outgoing]",
                      help="incoming: take the state's lock only when the migrated state arrives")
    sock.add_argument("-t", "--terminate", action="store_true", help="end when the data connection closes")
    sock.add_argument("--pid", metavar="file=F|fd=N", help="write the process id")
    sock.add_argument("--log", metavar="file=F|fd=N[,level=N][,prefix=P][,truncate]",
                      help="log here instead of stderr (file=- discards)")
    sock.add_argument("-d", "--daemon", action="store_true", help="detach once the sockets listen")
    sock.add_argument("--print-capabilities", action="store_true", help="print swtpm-style JSON capabilities")
    sock.add_argument("--version", action="store_true", help="print the version")
    sock.add_argument("-v", "--verbose", action="store_true", help="log each connection problem")
    sock.set_defaults(func=cmd_socket, prepare=lambda args: _socket_options(sock, args), state=None, prints_json=False)

    info = commands.add_parser("info", help="show what a vTPM state holds (no secrets)",
                               description="Show NV indices, persistent handles and PCR banks of a stored vTPM.")
    add_state_options(info)
    add_json_option(info, after_command=True)
    info.set_defaults(func=cmd_info, check=_check_store_named)

    host_daemon.add_parser(commands, lambda args, request: open_hosted_store(stores, args, request))
    return parser


def open_hosted_store(stores: StoreOptions, args: argparse.Namespace, request: host_daemon.AddRequest) -> StateStore:
    """The store a `vtpm host` add request names, opened as `serve` would open it."""
    if isinstance(stores, PlainStoreOptions):
        return host_daemon.open_plain(args, request)
    return stores.open(host_daemon.namespace_for(args, request))


def main(argv: Sequence[str] | None = None, stores: StoreOptions | None = None) -> int:
    """Run the `vtpm` command line: 0 on success, 1 on a failure (one ``error:`` line), 2 on a usage error."""
    stores = stores or PlainStoreOptions()
    parser = build_parser(stores)
    args = parser.parse_args(argv)
    if args.json and not getattr(args, "prints_json", True):
        parser.error(f"vtpm {args.command} has no JSON output: leave out --json")
    check = getattr(args, "check", None)
    if check is not None and (problem := check(args)):
        parser.error(problem)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="vtpm: %(message)s")
    prepare = getattr(args, "prepare", None)
    if prepare is not None:
        early = prepare(args)
        if early is not None:
            return int(early)
    with quiet_broken_pipe():
        try:
            return args.func(args, stores.open(args) if getattr(args, "opens_store", True) else None)
        except BrokenPipeError:
            raise
        except (StateStoreError, OSError, *stores.failures) as exc:
            print_error(f"vtpm {args.command}: {exc}")
            return 1

if __name__ == "__main__":
    sys.exit(main())
