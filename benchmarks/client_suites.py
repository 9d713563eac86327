"""Client test suites side by side: tpm2-pytss's own tests and tpm2-tools' integration suite, run
against swtpm and against our vTPM in the same run.

Both upstream harnesses start their TPM themselves, one per test (tpm2-tools: one per script, in a
fresh directory; tpm2-pytss: one per test, one per module for the FAPI tests), as
``swtpm socket --tpm2 --server port=P --ctrl type=tcp,port=P+1 --flags not-need-init
--tpmstate dir=D``, found as ``swtpm`` on PATH. For our side this script puts a directory first on
PATH whose ``swtpm`` is a small Python script serving this checkout's vTPM (``vtpm serve``) with the
same ports and state directory; so both sides run under the unmodified upstream harness.

- tpm2-pytss: ``pytest test/`` of the sdist whose version matches the installed tpm2-pytss (per-test
  timeout with pytest-timeout, parallel with pytest-xdist when installed), results from JUnit XML.
- tpm2-tools: every ``test/integration/tests/*.sh`` of the tag matching ``tpm2 --version``, run the
  way its Makefile does (``dbus-run-session bash TEST``, helpers.sh on PATH, TPM2_SIM=swtpm) through
  tpm2-abrmd when ``tpm2-abrmd`` and its TCTI are installed (``apt-get install tpm2-abrmd
  libtss2-tcti-tabrmd0``), else the tools talk to the TPM directly over the swtpm TCTI (said in the
  output; abrmd_* tests then fail on both sides). Exit status 77 is a skip, as in automake.
- ``tpm2_getcap commands`` and ``ecc-curves``: ours must list everything swtpm lists (this checks
  the vtpm of this checkout, started by tests/support; ``--vtpm-src`` applies to the two suites).

Sources (``--pytss-src``, ``--tools-src`` name unpacked trees; otherwise): a mirror repository
``MIRRORS/tpm2-software+tpm2-pytss/repo`` or ``.../tpm2-tools/repo`` (bare git, ``--mirrors``,
default /work/.mirror) at the matching tag, else for tpm2-pytss the PyPI sdist fetched with
``pip download``; unpacked under ``--cache`` (default ~/.cache/vmcrypt/client-suites).

Prints per suite and server the passed/failed/skipped counts, the tests that pass on swtpm but not
on ours, and those that pass on ours but not on swtpm. Exit status 0 only when the first list is
empty for every suite run and ``getcap`` shows nothing missing. Logs stay under ``--work``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGETS = ("swtpm", "vtpm")
PASSED, FAILED, SKIPPED = "passed", "failed", "skipped"
AUTOMAKE_SKIP = 77
DEFAULT_MIRRORS = Path("/work/.mirror")
DEFAULT_CACHE = Path.home() / ".cache" / "vmcrypt" / "client-suites"


class SuiteError(Exception):
    """The run cannot be prepared (sources, tools or the reference TPM missing)."""


@dataclass
class SuiteResult:
    """Outcome per test id for one suite on one TPM, and the wall time of the run."""

    suite: str
    target: str
    outcomes: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    note: str = ""

    def count(self, outcome: str) -> int:
        return sum(1 for value in self.outcomes.values() if value == outcome)


# ----------------------------------------------------------------------------- sources


def _git_tag_tree(repo: Path, tags: Sequence[str], dest: Path) -> Path | None:
    """``git archive`` of the first of ``tags`` that ``repo`` has, unpacked into ``dest``/<tag>."""
    if not repo.is_dir():
        return None
    have = set(subprocess.run(["git", "--git-dir", str(repo), "tag"], capture_output=True, text=True,
                              check=True).stdout.split())
    for tag in tags:
        if tag not in have:
            continue
        out = dest / tag
        if not (out / ".complete").exists():
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            archive = subprocess.run(["git", "--git-dir", str(repo), "archive", "--format=tar", tag],
                                     capture_output=True, check=True).stdout
            with tempfile.TemporaryFile() as handle:
                handle.write(archive)
                handle.seek(0)
                with tarfile.open(fileobj=handle) as tar:
                    tar.extractall(out, filter="data")
            (out / ".complete").write_text(tag)
        return out
    return None


def pytss_sources(args: argparse.Namespace) -> Path:
    """A tpm2-pytss tree with ``test/`` for the installed tpm2-pytss version."""
    if args.pytss_src:
        return _checked_tree(Path(args.pytss_src), "test/TSS2_BaseTest.py", "--pytss-src")
    version = metadata.version("tpm2-pytss")
    mirror = Path(args.mirrors) / "tpm2-software+tpm2-pytss" / "repo"
    tree = _git_tag_tree(mirror, [version, f"v{version}"], Path(args.cache) / "tpm2-pytss-git")
    if tree is not None:
        print(f"tpm2-pytss {version}: sources from the mirror {mirror} (tag {tree.name})")
        return tree
    out = Path(args.cache) / f"tpm2-pytss-{version}"
    if not (out / ".complete").exists():
        download = Path(args.cache) / "sdist"
        download.mkdir(parents=True, exist_ok=True)
        print(f"tpm2-pytss {version}: no tag {version} in {mirror}; fetching the PyPI sdist with pip download")
        subprocess.run([sys.executable, "-m", "pip", "download", f"tpm2-pytss=={version}", "--no-deps",
                        "--no-binary", "tpm2-pytss", "-d", str(download), "-q"], check=True)
        sdist = download / f"tpm2_pytss-{version}.tar.gz"
        shutil.rmtree(out, ignore_errors=True)
        with tarfile.open(sdist) as tar:
            tar.extractall(out.parent / f".{out.name}.tmp", filter="data")
        (out.parent / f".{out.name}.tmp" / f"tpm2_pytss-{version}").rename(out)
        shutil.rmtree(out.parent / f".{out.name}.tmp")
        (out / ".complete").write_text(version)
    print(f"tpm2-pytss {version}: sources from the PyPI sdist, unpacked in {out}")
    return out


def tools_version() -> str:
    """The installed tpm2-tools version, e.g. "5.4"."""
    text = subprocess.run(["tpm2", "--version"], capture_output=True, text=True).stdout
    found = re.search(r'version="([^"]+)"', text)
    if not found:
        raise SuiteError(f"cannot read the tpm2-tools version from `tpm2 --version`: {text!r}")
    return found.group(1)


def tools_sources(args: argparse.Namespace) -> Path:
    """A tpm2-tools tree with ``test/integration`` for the installed tpm2-tools version."""
    if args.tools_src:
        return _checked_tree(Path(args.tools_src), "test/integration/helpers.sh", "--tools-src")
    version = tools_version()
    mirror = Path(args.mirrors) / "tpm2-software+tpm2-tools" / "repo"
    tree = _git_tag_tree(mirror, [version, f"v{version}"], Path(args.cache) / "tpm2-tools-git")
    if tree is None:
        raise SuiteError(f"tpm2-tools {version}: no tag {version} in the mirror {mirror}; unpack the "
                         f"tpm2-tools {version} release and pass it with --tools-src DIR")
    print(f"tpm2-tools {version}: sources from the mirror {mirror} (tag {tree.name})")
    return tree


def _checked_tree(path: Path, marker: str, option: str) -> Path:
    if not (path / marker).is_file():
        raise SuiteError(f"{option} {path}: no {marker} there")
    return path.resolve()


# ----------------------------------------------------------------------------- our vTPM as `swtpm`

WRAPPER = '''#!{python}
"""`swtpm socket --tpm2 ...` as the upstream harnesses call it, served by `vtpm serve` of {repo}.

The two ports are bound first, before Python imports the engine: both harnesses give a simulator
about one second to listen (then kill it and try another port), and a busy machine can take longer
than that to start Python and import vtpm. Clients that connect early wait in the listen backlog.
"""
import socket
import sys


def options(text):
    return dict(item.split("=", 1) if "=" in item else (item, "") for item in text.split(","))


def listener(host, port):
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sys.exit(f"swtpm (vtpm wrapper): {{host}}:{{port}}: {{exc.strerror}}")
    sock.listen(64)
    return sock


argv, opts = sys.argv[1:], {{}}
if argv[:1] != ["socket"] or "--tpm2" not in argv:
    sys.exit(f"swtpm (vtpm wrapper): only `socket --tpm2` is served, not {{argv}}")
index = 1
while index < len(argv):
    name = argv[index]
    if name == "--tpm2":
        index += 1
        continue
    if index + 1 >= len(argv):
        sys.exit(f"swtpm (vtpm wrapper): {{name}} needs a value")
    opts[name] = options(argv[index + 1])
    index += 2
server, ctrl = opts.get("--server", {{}}), opts.get("--ctrl", {{}})
state = opts.get("--tpmstate", {{}}).get("dir")
if server.get("type", "tcp") != "tcp" or ctrl.get("type") != "tcp" or not state or "port" not in server:
    sys.exit("swtpm (vtpm wrapper): needs --server port=P, --ctrl type=tcp,port=P+1 and --tpmstate dir=D")
host, port = server.get("bindaddr", "127.0.0.1"), int(server["port"])
if int(ctrl.get("port", -1)) != port + 1:
    sys.exit("swtpm (vtpm wrapper): the control port must be the data port + 1")
bound = {{port: listener(host, port), port + 1: listener(host, port + 1)}}

sys.path.insert(0, {repo!r})
from vtpm.server import sockets  # noqa: E402
from vtpm.cli import main  # noqa: E402

tcp_listener = sockets.tcp_listener
sockets.tcp_listener = lambda h, p: bound.pop(p) if p in bound else tcp_listener(h, p)
serve = ["serve", "--state", state, "--create", "--host", host, "--port", str(port), "--protocol", "swtpm"]
if "startup-clear" in opts.get("--flags", {{}}):
    serve.append("--startup-clear")
sys.exit(main(serve))
'''


def write_wrapper(bin_dir: Path, vtpm_src: Path = REPO_ROOT) -> Path:
    """``bin_dir/swtpm``: a script (so its process name is "swtpm", as helpers.sh's `ss` check wants)
    serving the vtpm package of ``vtpm_src``."""
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = bin_dir / "swtpm"
    path.write_text(WRAPPER.format(python=sys.executable, repo=str(vtpm_src)))
    path.chmod(0o755)
    return path


def target_env(target: str, bin_dir: Path, extra_path: Sequence[Path] = ()) -> dict[str, str]:
    """The environment a harness sees for ``target``: our wrapper first on PATH for "vtpm"."""
    env = dict(os.environ)
    paths = [str(p) for p in extra_path]
    if target == "vtpm":
        paths.insert(0, str(bin_dir))
    env["PATH"] = os.pathsep.join([*paths, env.get("PATH", "")])
    env.pop("TPM2TOOLS_TCTI", None)
    env.pop("TSS2_FAPICONF", None)
    return env


# ----------------------------------------------------------------------------- tpm2-pytss


def run_pytss(src: Path, target: str, bin_dir: Path, logs: Path, args: argparse.Namespace) -> SuiteResult:
    """``pytest test/`` of the tpm2-pytss sources with ``target`` as the simulator."""
    logs.mkdir(parents=True, exist_ok=True)
    junit = logs / f"pytss-{target}.xml"
    junit.unlink(missing_ok=True)
    command = [sys.executable, "-m", "pytest", "test", "-p", "no:cacheprovider", "-q", "-rN",
               f"--junitxml={junit}", "-o", "junit_family=xunit2", "-o", "addopts="]
    if importlib.util.find_spec("pytest_timeout"):
        command.append(f"--timeout={args.timeout}")
    if args.jobs > 1 and importlib.util.find_spec("xdist"):
        command += ["-n", str(args.jobs)]
    if args.pytss_select:
        command += ["-k", args.pytss_select]
    env = target_env(target, bin_dir)
    env.pop("PYTHONPATH", None)  # the installed tpm2_pytss, not a source tree
    started = time.monotonic()
    rc = run_group(command, cwd=src, env=env, log=logs / f"pytss-{target}.log", timeout=args.suite_timeout)
    result = SuiteResult("tpm2-pytss", target, seconds=time.monotonic() - started)
    if not junit.exists():
        raise SuiteError(f"tpm2-pytss on {target}: pytest wrote no report (exit {rc}); "
                         f"see {logs / f'pytss-{target}.log'}")
    result.outcomes = junit_outcomes(junit)
    return result


def junit_outcomes(path: Path) -> dict[str, str]:
    """Test id (module.Class::name) → passed/failed/skipped from a pytest JUnit XML report."""
    outcomes: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        name = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag for child in case}
        if kinds & {"failure", "error"}:
            outcomes[name] = FAILED
        elif "skipped" in kinds:
            outcomes.setdefault(name, SKIPPED)
        else:
            outcomes.setdefault(name, PASSED)
    return outcomes


# ----------------------------------------------------------------------------- tpm2-tools


def abrmd_available() -> bool:
    """tpm2-abrmd, its TCTI library and a session bus launcher are installed."""
    if not (shutil.which("tpm2-abrmd") and shutil.which("dbus-run-session")):
        return False
    libdirs = [Path("/usr/lib/x86_64-linux-gnu"), Path("/usr/lib64"), Path("/usr/lib"), Path("/usr/local/lib")]
    return any(any(d.glob("libtss2-tcti-tabrmd.so*")) for d in libdirs if d.is_dir())


def tools_tests(src: Path, select: str | None) -> list[Path]:
    tests = sorted((src / "test" / "integration" / "tests").glob("*.sh"))
    if select:
        patterns = select.split(",")
        tests = [t for t in tests if any(fnmatch.fnmatch(t.stem, p) for p in patterns)]
    return tests


def run_tools_test(script: Path, src: Path, target: str, bin_dir: Path, logs: Path, timeout: float,
                   use_abrmd: bool) -> tuple[str, str]:
    """One integration script as the tpm2-tools Makefile runs it; (name, outcome)."""
    integration = src / "test" / "integration"
    env = target_env(target, bin_dir, [integration])
    env.update(TPM2_SIM="swtpm", srcdir=str(src), abs_srcdir=str(src), abs_builddir=str(src),
               TPM2_TOOLS_TEST_FIXTURES=str(integration / "fixtures"), TPM2TOOLS_TEST_PERSISTENT="false",
               PYTHON=shutil.which("python3") or "python3", TMPDIR=str(logs / "tmp"))
    for name in ("TPM2_SIMPORT", "TPM2ABRMD_TCTI", "TPM2TOOLS_TEST_TCTI", "TPM2_ABRMD"):
        env.pop(name, None)
    # Upstream runs `test/integration/tests/X.sh` from the build directory, where the scripts that start
    # no TPM leave their files; here each run gets a directory of its own with `test` linked in, so the
    # same script on the two servers side by side never shares one.
    cwd = logs / "run" / script.stem
    shutil.rmtree(cwd, ignore_errors=True)
    cwd.mkdir(parents=True)
    (cwd / "test").symlink_to(src / "test")
    relative = script.relative_to(src)
    command = ["bash", str(relative)]
    if use_abrmd:
        env["TPM2_ABRMD"] = "tpm2-abrmd"
        command = ["dbus-run-session", "--", *command]
    (logs / "tmp").mkdir(parents=True, exist_ok=True)
    rc = run_group(command, cwd=cwd, env=env, log=logs / f"{script.stem}.log", timeout=timeout)
    if rc in (0, AUTOMAKE_SKIP):
        shutil.rmtree(cwd, ignore_errors=True)
    return script.stem, PASSED if rc == 0 else SKIPPED if rc == AUTOMAKE_SKIP else FAILED


# ----------------------------------------------------------------------------- child processes

_RUNNING: set[subprocess.Popen[bytes]] = set()
_STOPPING = threading.Event()


def run_group(command: Sequence[str], *, cwd: Path, env: dict[str, str], log: Path, timeout: float) -> int | None:
    """Run ``command`` in its own process group, output to ``log``; the exit status, None on timeout.

    The whole group (simulators, tpm2-abrmd, dbus-daemon, pytest workers) is killed afterwards, so
    nothing a test started outlives it.
    """
    if _STOPPING.is_set():
        return None
    with open(log, "wb") as out:
        proc = subprocess.Popen(list(command), cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        _RUNNING.add(proc)
        try:
            rc: int | None = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            rc = None
            out.write(f"\n[client_suites] timed out after {timeout:.0f} s\n".encode())
        finally:
            _kill_group(proc)
            _RUNNING.discard(proc)
    return rc


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _stop_everything(signum: int, frame: object) -> None:
    _STOPPING.set()
    for proc in list(_RUNNING):
        _kill_group(proc)
    raise SystemExit(128 + signum)


def run_tools(src: Path, targets: Sequence[str], bin_dir: Path, logs: Path,
              args: argparse.Namespace) -> dict[str, SuiteResult]:
    """Every selected script on every target, ``--jobs`` at a time (each has its own ports and bus)."""
    use_abrmd = abrmd_available() and not args.no_abrmd
    note = ("through tpm2-abrmd (dbus-run-session), as upstream runs it" if use_abrmd else
            "directly over the swtpm TCTI (no tpm2-abrmd: install tpm2-abrmd and libtss2-tcti-tabrmd0)")
    print(f"tpm2-tools integration suite: {note}")
    tests = tools_tests(src, args.tools_select)
    results = {t: SuiteResult("tpm2-tools", t, note=note) for t in targets}
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs * len(targets)) as pool:
        futures = {pool.submit(run_tools_test, script, src, target, bin_dir, logs / target, args.timeout,
                               use_abrmd): target
                   for script in tests for target in targets}
        for future in concurrent.futures.as_completed(futures):
            name, outcome = future.result()
            results[futures[future]].outcomes[name] = outcome
    for result in results.values():
        result.seconds = time.monotonic() - started
    return results


# ----------------------------------------------------------------------------- getcap


def getcap_lists(kind: str, base: Path) -> dict[str, list[str]]:
    """``tpm2_getcap KIND`` on both servers: the names each lists (top-level keys of the YAML)."""
    sys.path.insert(0, str(REPO_ROOT / "tests"))
    from support.servers import side_by_side

    found: dict[str, list[str]] = {}
    with side_by_side(base) as servers:
        for name, server in servers.items():
            out = subprocess.run(["tpm2_getcap", kind], env=server.tools_env(), capture_output=True, text=True,
                                 timeout=60, check=True).stdout
            found[name] = [line.split(":")[0].strip() for line in out.splitlines()
                           if line and not line.startswith((" ", "\t", "-"))]
    return found


# ----------------------------------------------------------------------------- report


def compare(results: dict[str, SuiteResult]) -> tuple[list[str], list[str]]:
    """(passes on swtpm but not on ours, passes on ours but not on swtpm)."""
    ref, ours = results.get("swtpm"), results.get("vtpm")
    if ref is None or ours is None:
        return [], []
    ours_missing = sorted(t for t, o in ref.outcomes.items() if o == PASSED and ours.outcomes.get(t) != PASSED)
    ours_extra = sorted(t for t, o in ours.outcomes.items() if o == PASSED and ref.outcomes.get(t) != PASSED)
    return ours_missing, ours_extra


def report(suite: str, results: dict[str, SuiteResult], out: list[str]) -> list[str]:
    out.append(f"== {suite}")
    for target, result in results.items():
        out.append(f"  {target:6} passed {result.count(PASSED):4}  failed {result.count(FAILED):4}  "
                   f"skipped {result.count(SKIPPED):4}  ({len(result.outcomes)} tests, {result.seconds:.0f} s)")
    missing, extra = compare(results)
    if "swtpm" in results and "vtpm" in results:
        out.append(f"  pass on swtpm, not on ours: {len(missing)}")
        out.extend(f"    {name} ({results['vtpm'].outcomes.get(name, 'not run')})" for name in missing)
        out.append(f"  pass on ours, not on swtpm: {len(extra)}")
        out.extend(f"    {name} ({results['swtpm'].outcomes.get(name, 'not run')})" for name in extra)
    return missing


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--suites", default="pytss,tools,getcap",
                        help="comma-separated: pytss, tools, getcap (default: all three)")
    parser.add_argument("--targets", default="swtpm,vtpm", help="comma-separated: swtpm, vtpm (default both)")
    parser.add_argument("--vtpm-src", default=str(REPO_ROOT),
                        help="the checkout whose vtpm is served as ours (default: this one, %(default)s)")
    parser.add_argument("--pytss-src", help="an unpacked tpm2-pytss source tree (with test/)")
    parser.add_argument("--tools-src", help="an unpacked tpm2-tools source tree (with test/integration/)")
    parser.add_argument("--mirrors", default=str(DEFAULT_MIRRORS), help="where bare mirrors are (default %(default)s)")
    parser.add_argument("--cache", default=str(DEFAULT_CACHE), help="where sources are unpacked (default %(default)s)")
    parser.add_argument("--work", help="logs and reports (default: a new directory under /tmp)")
    parser.add_argument("--jobs", type=int, default=1,
                        help="tests at a time per suite and server (default %(default)s; the two servers and "
                             "the two suites always run side by side)")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per test (default %(default)s)")
    parser.add_argument("--suite-timeout", type=float, default=4 * 3600.0, help="seconds per pytest run")
    parser.add_argument("--pytss-select", metavar="EXPR", help="pytest -k expression for tpm2-pytss")
    parser.add_argument("--tools-select", metavar="GLOBS", help="comma-separated globs of script names, e.g. 'ecc,nv*'")
    parser.add_argument("--no-abrmd", action="store_true", help="run the tools suite without tpm2-abrmd")
    parser.add_argument("--json", metavar="PATH", help="also write every outcome as JSON")
    args = parser.parse_args(argv)
    args.suites = [s for s in args.suites.split(",") if s]
    args.targets = [t for t in args.targets.split(",") if t]
    if set(args.suites) - {"pytss", "tools", "getcap"} or set(args.targets) - set(TARGETS) or not args.targets:
        parser.error("--suites takes pytss, tools, getcap; --targets takes swtpm, vtpm")
    if not 1 <= args.jobs <= 64 or args.timeout <= 0:
        parser.error("--jobs must be 1..64 and --timeout positive")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _stop_everything)
    signal.signal(signal.SIGINT, _stop_everything)
    for binary in ("swtpm", "tpm2", "tpm2_getcap"):
        if shutil.which(binary) is None:
            print(f"error: {binary} is not installed (scripts/bootstrap.sh installs swtpm and tpm2-tools)",
                  file=sys.stderr)
            return 2
    work = Path(args.work or tempfile.mkdtemp(prefix="client-suites-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    bin_dir = work / "bin"
    if not (Path(args.vtpm_src) / "vtpm" / "cli.py").is_file():
        print(f"error: --vtpm-src {args.vtpm_src}: no vtpm/cli.py there", file=sys.stderr)
        return 2
    write_wrapper(bin_dir, Path(args.vtpm_src).resolve())
    print(f"work directory (logs): {work}")
    lines: list[str] = []
    failing = 0
    everything: dict[str, dict[str, object]] = {}
    try:
        jobs: dict[str, concurrent.futures.Future[dict[str, SuiteResult]]] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            if "pytss" in args.suites:
                src = pytss_sources(args)

                def pytss_all() -> dict[str, SuiteResult]:
                    with concurrent.futures.ThreadPoolExecutor(max_workers=len(args.targets)) as inner:
                        futures = {t: inner.submit(run_pytss, src, t, bin_dir, work / "pytss", args)
                                   for t in args.targets}
                        return {t: f.result() for t, f in futures.items()}

                jobs["tpm2-pytss"] = pool.submit(pytss_all)
            if "tools" in args.suites:
                tools_src = tools_sources(args)
                jobs["tpm2-tools"] = pool.submit(run_tools, tools_src, args.targets, bin_dir, work / "tools", args)
            for suite, future in jobs.items():
                results = future.result()
                failing += len(report(suite, results, lines))
                everything[suite] = {t: asdict(r) for t, r in results.items()}
        if "getcap" in args.suites and set(args.targets) == set(TARGETS):
            for kind in ("commands", "ecc-curves"):
                found = getcap_lists(kind, work / f"getcap-{kind}")
                missing = sorted(set(found["swtpm"]) - set(found["vtpm"]))
                extra = sorted(set(found["vtpm"]) - set(found["swtpm"]))
                lines.append(f"== tpm2_getcap {kind}: swtpm {len(found['swtpm'])}, ours {len(found['vtpm'])}; "
                             f"missing on ours: {missing or 'none'}; only ours: {extra or 'none'}")
                failing += len(missing)
                everything[f"getcap {kind}"] = found
    except (SuiteError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(everything, indent=1, sort_keys=True))
    return 0 if failing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
