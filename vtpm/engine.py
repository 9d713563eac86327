"""The TPM 2.0 engine: one entry point, ``Tpm.execute(locality, command) -> response``.

Sans-IO: no sockets, no files, no wall clock. Time comes from an injected
millisecond clock and persistent state leaves through one callback, so the
same engine runs in-process, behind any transport, or inside a test.

The engine owns the pipeline every command goes through (Part 3, section
5): header checks, command lookup, handle checks, the authorization area
and authorization checks, parameter parsing with parameter numbers, and the
response layout; command modules only register small handlers.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import time
from collections.abc import Callable, Collection
from typing import Protocol

import construct as cs

import vtpm.commands  # noqa: F401  (each command module registers its handlers on import)
from vtpm import wire
from vtpm.authorization import (
    PASSWORD_FORBIDDEN,
    AuthContext,
    authorize,
    authorize_password,
    finish_without_sessions,
    password_response,
    respond,
)
from vtpm.constants import CC, HT, RC, RH, ST
from vtpm.core import (
    COMMANDS,
    ENTITY_RESOLVERS,
    Auth,
    Command,
    CommandSpec,
    Entity,
    EntityResolver,
    HandleSpec,
    Handler,
    Response,
    Session,
    command,
    entity_resolver,
    handle_spec,
)
from vtpm.crypto import MAX_DIGEST
from vtpm.entities import hierarchy, nv, object_table, pcr, session_table  # noqa: F401  (entity resolvers)
from vtpm.entities.dictionary_attack import DictionaryAttack
from vtpm.errors import TpmError
from vtpm.state import TpmState, Volatile

log = logging.getLogger(__name__)
_HEADER = struct.Struct(">HII")  # tag, commandSize, commandCode
_U32 = struct.Struct(">I")
# Enum members looked up on every command cost a class attribute lookup each: plain ints instead.
_SESSIONS, _NO_SESSIONS = int(ST.SESSIONS), int(ST.NO_SESSIONS)
_PERMANENT, _PW = int(HT.PERMANENT), int(RH.PW)
_PW_EMPTY_NONCE = _U32.pack(_PW) + b"\x00\x00"  # sessionHandle TPM_RS_PW, an empty nonceCaller

HEADER_SIZE = 10
MAX_COMMAND_SIZE = 4096
MAX_RESPONSE_SIZE = 4096
MAX_SESSIONS = 3


PersistCallback = Callable[[bytes], None]

# A parsed command as kept for its bytes: its spec, code, the Command handed to the handler (only
# ``locality`` changes between runs), each handle's entity resolver, the password check (handle
# position, its HandleSpec, the password) or None without sessions, and the password session's
# response area (None without sessions): what ``_execute_parsed`` needs and nothing to look up.
# A kept command's shape (the bytes before its parameters) maps to the same tuple: its Command
# lends the handles and sessions, and its parameters to ``CommandSpec.reparse``.
_Parsed = tuple[CommandSpec, int, Command, tuple["EntityResolver", ...],
                tuple[int, HandleSpec, bytes] | None, bytes | None]

# Commands whose parsed form a Tpm keeps, by their bytes, and reuses when the same bytes come again
# (a client polling PCRs, extending measurements, reading an NV index): parsing the header, handles,
# authorization area and parameters depends on the bytes alone, and these handlers only read their
# parameters. Kept: commands without sessions or with one empty password session (no secret is
# kept), at most PARSED_MAX_BYTES long, PARSED_ENTRIES of them (then the cache starts over). Their
# shapes (the bytes before the parameters) are kept as well: a command that differs from one kept
# only in its parameters (a PCR_Extend of a new digest) parses just those.
REPEATABLE = frozenset(int(c) for c in (
    CC.GetRandom, CC.PCR_Read, CC.PCR_Extend, CC.NV_Read, CC.NV_Write, CC.NV_ReadPublic, CC.ReadClock,
    CC.GetCapability, CC.ReadPublic, CC.NV_Increment, CC.NV_Extend, CC.NV_SetBits, CC.GetTestResult))
PARSED_MAX_BYTES = 256
PARSED_ENTRIES = 16


class StateSink(Protocol):
    """A persistence target that takes the state itself (``vtpm.journal_store.JournaledStore``): it
    journals only what changed instead of receiving the whole state serialized. ``nv``, when given,
    names the NV indices that are all that changed of the state's keyed collections (NV indices,
    persistent objects, primary cache); None: anything may have changed."""

    def persist_state(self, state: TpmState, nv: Collection[int] | None = None) -> None:
        """Make ``state`` durable before the command's response is sent; raising makes it NV_UNAVAILABLE."""
        ...


class Tpm:
    """A TPM 2.0 device. Not thread-safe: one command at a time (as a real TPM)."""

    def __init__(
        self,
        state: TpmState | None = None,
        *,
        persist: PersistCallback | StateSink | None = None,
        clock_ms: Callable[[], int] | None = None,
    ) -> None:
        self.state = state or TpmState.manufacture()
        # A StateSink gets the state; a plain callback gets the whole state serialized.
        self._persist_state: Callable[[TpmState, Collection[int] | None], None] | None = getattr(
            persist, "persist_state", None)
        self._persist = None if self._persist_state is not None else persist
        self._clock_ms = clock_ms or (lambda: time.monotonic_ns() // 1_000_000)
        self.volatile = Volatile.power_on(self.state, self._clock_ms())
        self.dirty = False
        # What changed since the last save, when the handlers said: the NV indices written (mark_nv_dirty)
        # and nothing else of the keyed collections; None once a mark_dirty() said nothing more.
        self._dirty_nv: set[int] | None = set()
        self.locality = 0
        # Entities an entity resolver may hand out again, by handle, with what they were made from.
        self.entity_cache: dict[int, tuple[tuple[object, ...], Entity]] = {}
        # Commands seen before, by their bytes, as parsed then (see REPEATABLE).
        self._parsed: dict[bytes, _Parsed] = {}
        # Their shapes, by the bytes before the parameters (header, handles, authorization area): a
        # command with the same shape and new parameters (a PCR_Extend of a new digest) parses only those.
        self._shapes: dict[bytes, _Parsed] = {}

    # ------------------------------------------------------------------ lifecycle

    def power_cycle(self) -> None:
        """_TPM_Init: volatile state is lost; the next command must be Startup."""
        self.volatile = Volatile.power_on(self.state, self._clock_ms())

    def now_ms(self) -> int:
        """Milliseconds since the last _TPM_Init."""
        return self._clock_ms() - self.volatile.init_time_ms

    def clock_now(self, now_ms: int | None = None) -> int:
        """TPM Clock: persistent milliseconds, advancing while powered (at ``now_ms``, a reading of the
        clock the caller took; default: now)."""
        now = self._clock_ms() if now_ms is None else now_ms
        return self.state.clock_ms + (now - self.volatile.clock_base_ms) * self.volatile.clock_rate // 1_000_000

    def mark_dirty(self) -> None:
        """Something the spec makes persistent changed: save it after this command."""
        self.dirty = True
        self._dirty_nv = None

    def mark_nv_dirty(self, handle: int) -> None:
        """Only fields of the existing NV index ``handle`` changed (and maybe scalars such as the
        clock): save after this command; a journal then compares just that index of the collections."""
        self.dirty = True
        if self._dirty_nv is not None:
            self._dirty_nv.add(handle)

    def flush_state(self) -> None:
        """Save the persistent state now: fold the elapsed time into Clock, then hand the state to the sink
        (with the NV indices changed, if only those did) or its bytes to the callback.

        ``execute`` calls it after a command that changed the state; servers call it on shutdown so the
        Clock is kept. Raises whatever the sink or callback raises (e.g. StateStoreError)."""
        now = self._clock_ms()  # one reading of the clock for both
        self.state.clock_ms = self.clock_now(now)
        self.volatile.clock_base_ms = now
        self.dirty = False
        nv, self._dirty_nv = self._dirty_nv, set()
        if self._persist_state is not None:
            self._persist_state(self.state, nv or None)
        elif self._persist is not None:
            self._persist(self.state.to_bytes())

    # ------------------------------------------------------------------ execution

    def execute(self, locality: int, command: bytes) -> bytes:
        """Run one command; always returns a well-formed response, never raises."""
        self.locality = locality
        if command.__class__ is not bytes:
            command = bytes(command)
        try:
            parsed = self._parsed.get(command)
            response = self._execute(command) if parsed is None else self._execute_parsed(parsed)
        except TpmError as exc:
            response = wire.error_response(exc.code)
        except Exception:  # a bug must not take the TPM (or its server) down
            log.exception("internal error while executing a command")
            response = wire.error_response(RC.FAILURE)
        if self.dirty:
            try:
                self.flush_state()
            except Exception:
                log.exception("persisting TPM state failed")
                return wire.error_response(RC.NV_UNAVAILABLE)
        return response

    def _execute(self, data: bytes) -> bytes:
        """Parse and run a command not kept parsed (see ``REPEATABLE``); raises TpmError for the error response."""
        length = len(data)
        if length < HEADER_SIZE:
            raise TpmError(RC.COMMAND_SIZE)
        tag, size, code = _HEADER.unpack_from(data)
        if tag != _SESSIONS and tag != _NO_SESSIONS:
            # A TPM 1.2 command (tag 0x00C1) too gets a TPM 2.0 header: OVMF probes a TIS TPM with a
            # 1.2 GetTicks and takes any answer tagged TPM_ST_RSP_COMMAND (0x00C4) for a TPM 1.2,
            # after which it measures nothing (swtpm answers TPM_ST_NO_SESSIONS as well).
            raise TpmError(RC.BAD_TAG)
        if size != length or size > MAX_COMMAND_SIZE:
            raise TpmError(RC.COMMAND_SIZE)
        spec = COMMANDS.get(code)
        if spec is None:
            raise TpmError(RC.COMMAND_CODE)
        if self._shapes:
            end = HEADER_SIZE + 4 * len(spec.handles)
            if tag == _SESSIONS and length >= end + 4:
                end += 4 + _U32.unpack_from(data, end)[0]
            if end <= length:
                shape = self._shapes.get(data[:end])
                if shape is not None:  # the same header, handles and sessions as a command kept: new parameters
                    spec, code, kept, resolvers, password, tail = shape
                    raw = data[end:] if end != length else b""
                    cmd = Command(code, self.locality, kept.handles, None, kept.sessions, raw, tag)
                    return self._execute_parsed((spec, code, cmd, resolvers, password, tail), data, kept)
        volatile = self.volatile
        if not volatile.started and not spec.before_startup:
            raise TpmError(RC.INITIALIZE)
        volatile.commands_since_startup += 1  # Volatile.note_command, inline

        offset = HEADER_SIZE
        handles: list[int] = []
        for number, hspec in enumerate(spec.handles, 1):
            if length < offset + 4:
                raise TpmError(RC.INSUFFICIENT, handle=number)
            handle = _U32.unpack_from(data, offset)[0]
            offset += 4
            kind = handle >> 24  # HandleSpec.accepts, inline
            if kind not in hspec.types or (kind == _PERMANENT and handle not in hspec.permanent):
                raise TpmError(RC.VALUE, handle=number)
            handles.append(handle)

        if tag == _SESSIONS:
            if not spec.allow_sessions:
                raise TpmError(RC.AUTH_CONTEXT)
            sessions, offset = _parse_sessions(data, offset)
        else:
            sessions = []
        auth_handles = spec.auth_handles
        if len(sessions) < len(auth_handles):
            raise TpmError(RC.AUTH_MISSING)

        entities = self._entities(handles)
        raw_params = data[offset:] if offset != length else b""
        if not sessions:  # nothing to authorize, no session to answer: the short way
            params = _parse_params(spec, raw_params)
            cmd = Command(code, self.locality, handles, params, sessions, raw_params, tag)
            if code in REPEATABLE and length <= PARSED_MAX_BYTES:
                self._remember(data, offset, (spec, code, cmd, _resolvers(handles), None, None))
            result = spec.handler(self, cmd)
            finish_without_sessions(self, spec, code, entities, handles, raw_params, result.params)
            return _response(tag, result.handles, result.params)
        if _one_password(sessions, auth_handles):
            # One password session for the one handle that needs authorization (the common case
            # of tpm2-tools): checked directly, without the generic authorization context.
            session, index = sessions[0], auth_handles[0]
            authorize_password(self, code, handles[index], spec.handles[index], entities[index], session.hmac)
            params = _parse_params(spec, raw_params)
            cmd = Command(code, self.locality, handles, params, sessions, raw_params, tag)
            tail = password_response(session.attributes)
            if code in REPEATABLE and length <= PARSED_MAX_BYTES and not session.hmac:  # no password kept
                self._remember(data, offset, (spec, code, cmd, _resolvers(handles),
                                              (index, spec.handles[index], session.hmac), tail))
            result = spec.handler(self, cmd)
            out = result.params
            finish_without_sessions(self, spec, code, entities, handles, raw_params, out)
            return _response(tag, result.handles, _U32.pack(len(out)) + out + tail)
        ctx, raw_params = authorize(self, spec, code, handles, entities, sessions, raw_params, auth_handles)
        params = _parse_params(spec, raw_params)
        cmd = Command(code, self.locality, handles, params, sessions, raw_params, tag)
        result = spec.handler(self, cmd)
        return _build_response(self, tag, code, result, ctx)

    def _entities(self, handles: list[int]) -> list[Entity]:
        """Each handle's entity (its resolver), with the handle number in a resolver's error."""
        entities: list[Entity] = []
        for number, handle in enumerate(handles, 1):
            resolver = ENTITY_RESOLVERS.get(handle >> 24)
            if resolver is None:
                raise TpmError(RC.HANDLE, handle=number)
            try:
                entities.append(resolver(self, handle))
            except TpmError as exc:
                raise _at_handle(exc, number)
        return entities

    def _keep(self, data: bytes, parsed: _Parsed) -> None:
        """Keep a command parsed by its bytes (PARSED_ENTRIES of them, then the cache starts over)."""
        cache = self._parsed
        if len(cache) >= PARSED_ENTRIES:
            cache.clear()
        cache[data] = parsed

    def _remember(self, data: bytes, params_at: int, parsed: _Parsed) -> None:
        """Keep a command parsed by its bytes, and its shape by the bytes before its parameters."""
        self._keep(data, parsed)
        shapes = self._shapes
        if len(shapes) >= PARSED_ENTRIES:
            shapes.clear()
        shapes[data[:params_at]] = parsed

    def _execute_parsed(self, parsed: _Parsed, parse: bytes | None = None, kept: Command | None = None) -> bytes:
        """A command whose bytes were parsed before (``REPEATABLE``): what ``_execute`` does after
        parsing, in the same order: started, the entities, the password if any, the parameters
        (``parse``: new parameters in the shape of ``kept``; these command bytes are then kept unless
        ``CommandSpec.reparse`` built them), handler, response."""
        spec, code, cmd, resolvers, password, tail = parsed
        volatile = self.volatile
        if not volatile.started and not spec.before_startup:
            raise TpmError(RC.INITIALIZE)
        volatile.commands_since_startup += 1
        cmd.locality = self.locality
        handles = cmd.handles
        entities = self._resolved(resolvers, handles) if resolvers else _NO_ENTITIES
        if password is not None:
            index, hspec, value = password
            authorize_password(self, code, handles[index], hspec, entities[index], value)
        if parse is not None:
            reparse = spec.reparse
            # Built from the kept layout, a command is not kept itself: its shape serves it as quickly,
            # and new digest after new digest (a measured boot) would only push the others out.
            if reparse is None or not reparse(cmd, kept):  # type: ignore[arg-type]  (kept comes with parse)
                cmd.params = _parse_params(spec, cmd.raw_params)
                self._keep(parse, parsed)  # as long as the kept command: the shape holds commandSize
        result = spec.handler(self, cmd)
        out = result.params
        finish_without_sessions(self, spec, code, entities, handles, cmd.raw_params, out)
        return _response(cmd.tag, result.handles, out if tail is None else _U32.pack(len(out)) + out + tail)

    def _resolved(self, resolvers: tuple[EntityResolver, ...], handles: list[int]) -> list[Entity]:
        """``_entities`` with each handle's resolver known (a kept command's)."""
        number = 0
        try:
            count = len(resolvers)
            if count == 1:
                return [resolvers[0](self, handles[0])]
            if count == 2:  # NV_Read, NV_Write: the authorizing handle, then the index
                first = resolvers[0](self, handles[0])
                number = 1
                return [first, resolvers[1](self, handles[1])]
            entities = []
            for number, resolver in enumerate(resolvers):
                entities.append(resolver(self, handles[number]))
            return entities
        except TpmError as exc:
            raise _at_handle(exc, number + 1)

    @property
    def dictionary_attack(self) -> DictionaryAttack:
        """The dictionary-attack rules (lockout counter, healing) applied to this TPM's state."""
        return DictionaryAttack(self)

    def random(self, n: int) -> bytes:
        """``n`` bytes from the OS CSPRNG: the TPM's RNG for nonces, keys and GetRandom."""
        return os.urandom(n)  # what secrets.token_bytes returns, without its two extra calls


_NO_ENTITIES: list[Entity] = []


def _at_handle(exc: TpmError, number: int) -> TpmError:
    """A resolver's error for handle ``number`` (1-based): TPM_RC_REFERENCE_H0 becomes that handle's
    reference code; an error that names no handle, parameter or session names this handle."""
    if exc.rc == RC.REFERENCE_H0:
        exc.rc = RC.REFERENCE_H0 + number - 1
    elif not (exc.handle or exc.param or exc.session):
        exc.handle = number
    return exc


def _resolvers(handles: list[int]) -> tuple[EntityResolver, ...]:
    """Each handle's entity resolver (all exist: ``_entities`` resolved the handles already)."""
    if len(handles) == 1:
        return (ENTITY_RESOLVERS[handles[0] >> 24],)
    return tuple([ENTITY_RESOLVERS[handle >> 24] for handle in handles])


def _one_password(sessions: list[Session], auth_handles: tuple[int, ...]) -> bool:
    """Is the authorization area one password session (no nonce; no encrypt, decrypt or audit) for
    the command's one handle that needs authorization? Then ``authorize_password`` checks it."""
    if len(sessions) != 1 or len(auth_handles) != 1:
        return False
    session = sessions[0]
    return session.handle == _PW and not session.nonce and not session.attributes & PASSWORD_FORBIDDEN


def _parse_sessions(data: bytes, offset: int) -> tuple[list[Session], int]:
    """The authorization area (TPMS_AUTH_COMMAND entries), with the reference implementation's codes.

    Every authorized command passes here, so it reads the bytes directly rather
    than through `construct` (TPMS_AUTH_COMMAND in marshal.structures declares
    the same layout and a property test holds the two to each other).
    """
    if len(data) < offset + 4:
        raise TpmError(RC.INSUFFICIENT)
    auth_size = _U32.unpack_from(data, offset)[0]
    start = offset + 4
    end = start + auth_size
    if auth_size < 9 or end > len(data):
        raise TpmError(RC.SIZE)
    if data[start : start + 6] == _PW_EMPTY_NONCE:  # one password session, as most callers send
        hmac_size = (data[start + 7] << 8) | data[start + 8]
        if auth_size == 9 + hmac_size and hmac_size <= MAX_DIGEST:
            return [Session(_PW, b"", data[start + 6], data[start + 9 : end])], end
    sessions: list[Session] = []
    pos = start
    while pos < end:
        number = len(sessions) + 1
        if number > MAX_SESSIONS:
            raise TpmError(RC.AUTHSIZE)
        if end - pos < 6:
            raise TpmError(RC.INSUFFICIENT, session=number)
        handle = int.from_bytes(data[pos : pos + 4], "big")
        nonce_size = int.from_bytes(data[pos + 4 : pos + 6], "big")
        if nonce_size > MAX_DIGEST:
            raise TpmError(RC.SIZE, session=number)
        pos += 6
        if pos + nonce_size + 3 > end:
            raise TpmError(RC.INSUFFICIENT, session=number)
        nonce = data[pos : pos + nonce_size]
        attributes = data[pos + nonce_size]
        pos += nonce_size + 1
        hmac_size = int.from_bytes(data[pos : pos + 2], "big")
        if hmac_size > MAX_DIGEST:
            raise TpmError(RC.SIZE, session=number)
        pos += 2
        if pos + hmac_size > end:
            raise TpmError(RC.INSUFFICIENT, session=number)
        sessions.append(Session(handle, nonce, attributes, data[pos : pos + hmac_size]))
        pos += hmac_size
    return sessions, end


def _parse_params(spec: CommandSpec, raw: bytes) -> cs.Container:
    fixed = spec.fixed
    if fixed is not None and len(raw) == fixed[0].size:  # plain integers, all there: one unpack
        return cs.Container(zip(fixed[1], fixed[0].unpack(raw)))
    readers = spec.readers
    if readers is not None:  # the direct readers: same values and codes as the constructs
        params = cs.Container()
        pos = 0
        number = 0
        try:
            for number, (name, read) in enumerate(readers, 1):
                params[name], pos = read(raw, pos)
        except TpmError as exc:
            raise exc.at_param(number)
        except cs.StreamError:
            raise TpmError(RC.INSUFFICIENT, param=number) from None
        if pos != len(raw):
            raise TpmError(RC.SIZE)
        return params
    return _parse_params_construct(spec, raw)


def _parse_params_construct(spec: CommandSpec, raw: bytes) -> cs.Container:
    stream = io.BytesIO(raw)
    params = cs.Container()
    for number, (name, construct) in enumerate(spec.params, 1):
        try:
            params[name] = construct.parse_stream(stream)
        except TpmError as exc:
            raise exc.at_param(number)
        except cs.StreamError:
            raise TpmError(RC.INSUFFICIENT, param=number) from None
        except cs.ConstructError:
            raise TpmError(RC.VALUE, param=number) from None
    if stream.tell() != len(raw):
        raise TpmError(RC.SIZE)
    return params


def _build_response(tpm: "Tpm", tag: int, code: int, result: Response, ctx: AuthContext) -> bytes:
    params, area = respond(tpm, ctx, code, result.params, tag)
    if tag == _SESSIONS:
        params = len(params).to_bytes(4, "big") + params + area
    return _response(tag, result.handles, params)


def _response(tag: int, handles: tuple[int, ...], rest: bytes) -> bytes:
    """Header, handle area, then the rest (parameters, or parameterSize, parameters and sessions)."""
    if handles:
        rest = b"".join(_U32.pack(h) for h in handles) + rest
    size = HEADER_SIZE + len(rest)
    if size > MAX_RESPONSE_SIZE:
        raise TpmError(RC.SIZE)
    return _HEADER.pack(tag, size, 0) + rest  # TPM_RC_SUCCESS


# The engine's types live in vtpm.core; they stay importable from here.
__all__ = [
    "COMMANDS", "ENTITY_RESOLVERS", "Auth", "CC", "Command", "CommandSpec", "Entity", "HandleSpec", "Handler",
    "Response", "Session", "Tpm", "TpmError", "command", "entity_resolver", "handle_spec",
]
