"""What the engine and the command modules share: the bottom of the command layer.

A command module declares its handlers with ``@command`` (the handles each one
takes, with the authorization role they need, and its parameters) and the
entities behind handles register how they are looked up with
``@entity_resolver``; the engine (``vtpm.engine``) reads both registries to run
the pipeline of Part 3, section 5. Nothing here imports the engine, the
entities or the commands, so every layer above can import this module.
"""

from __future__ import annotations

import enum
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import construct as cs

from vtpm.constants import CC, HT
from vtpm.marshal.fast import Fixed, Reader, compile_fixed, compile_params

_PERMANENT = int(HT.PERMANENT)

if TYPE_CHECKING:
    from vtpm.engine import Tpm


class Auth(enum.Enum):
    """The authorization role a handle needs (Part 3 notation: @ is USER)."""

    NONE = "none"
    USER = "user"
    ADMIN = "admin"
    DUP = "dup"


@dataclass(frozen=True)
class HandleSpec:
    """One handle of a command: its role and which handles it accepts.

    ``types`` are the handle types (top byte) accepted; ``permanent`` lists
    the permanent handles accepted when HT.PERMANENT is among the types.
    A handle outside these is TPM_RC_VALUE for that handle number.
    """

    name: str
    auth: Auth = Auth.NONE
    types: frozenset[int] = frozenset()
    permanent: frozenset[int] = frozenset()

    def accepts(self, handle: int) -> bool:
        """Whether ``handle`` is of a type (and, for permanent handles, one of the handles) this role accepts."""
        kind = handle >> 24
        if kind not in self.types:
            return False
        return kind != _PERMANENT or handle in self.permanent


def handle_spec(name: str, auth: Auth = Auth.NONE, *, types: Iterable[int] = (), permanent: Iterable[int] = ()) -> HandleSpec:
    """A HandleSpec from types and permanent handles given as any ints; naming permanent handles accepts
    TPM_HT_PERMANENT."""
    permanent = frozenset(int(h) for h in permanent)
    kinds = {int(t) for t in types} | ({HT.PERMANENT} if permanent else set())
    return HandleSpec(name, auth, frozenset(kinds), permanent)


@dataclass(slots=True)  # Session, Command and Response are made for every command: slots are quicker to read
class Session:
    """One entry of the command's authorization area."""

    handle: int
    nonce: bytes
    attributes: int
    hmac: bytes


@dataclass(slots=True)
class Command:
    """A parsed command as a handler sees it."""

    code: int
    locality: int
    handles: list[int]
    params: Any
    sessions: list[Session]
    raw_params: bytes
    tag: int
    # What a handler derived from the parameters alone and keeps for the next run of the same command
    # (the engine runs a kept command's Command again, see engine.REPEATABLE); the handler checks
    # that what it derived it from is still current.
    memo: Any = None


@dataclass(slots=True)
class Response:
    """What a handler returns: the response parameters marshalled and the handles that precede them."""
    params: bytes = b""
    handles: tuple[int, ...] = ()


Handler = Callable[["Tpm", Command], Response]


@dataclass(frozen=True)
class CommandSpec:
    """A registered command: its handler, handle roles, parameter layout, when it may run, and the readers the engine
    unmarshals the parameters with."""
    code: CC
    handler: Handler
    handles: tuple[HandleSpec, ...]
    params: tuple[tuple[str, cs.Construct], ...]
    before_startup: bool = False
    allow_sessions: bool = True
    response_tpm2b: bool = False  # the first response parameter is a TPM2B (may be encrypted)
    # Direct readers for ``params`` (vtpm.marshal.fast), None when they need `construct`.
    readers: tuple[tuple[str, Reader], ...] | None = None
    # Positions (0-based) of the handles that need an authorization session, in order.
    auth_handles: tuple[int, ...] = ()
    # The whole parameter area as one struct layout and the names, when every parameter is a plain integer.
    fixed: Fixed | None = None
    # Parameters of new bytes in a kept command's layout, without the readers: ``reparse(cmd, kept)`` fills
    # ``cmd`` (params, memo) from ``kept``, a command parsed before with the same header, handles and
    # sessions, when ``cmd.raw_params`` would parse to kept's structure; False: the readers parse them.
    reparse: Callable[["Command", "Command"], bool] | None = None


COMMANDS: dict[int, CommandSpec] = {}


def command(
    code: CC,
    *,
    handles: Iterable[HandleSpec] = (),
    params: Iterable[tuple[str, cs.Construct]] = (),
    before_startup: bool = False,
    allow_sessions: bool = True,
    response_tpm2b: bool = False,
    reparse: Callable[[Command, Command], bool] | None = None,
) -> Callable[[Handler], Handler]:
    """Register a command handler; used by the modules in ``vtpm.commands``."""

    def register(handler: Handler) -> Handler:
        if code in COMMANDS:
            raise RuntimeError(f"{code.name} registered twice")
        declared, specs = tuple(params), tuple(handles)
        COMMANDS[code] = CommandSpec(
            code, handler, specs, declared, before_startup, allow_sessions, response_tpm2b,
            compile_params(declared), tuple(i for i, h in enumerate(specs) if h.auth != Auth.NONE),
            compile_fixed(declared), reparse,
        )
        return handler

    return register


_set_attribute = object.__setattr__


@dataclass(frozen=True, init=False)
class Entity:
    """What authorization needs to know about the object a handle names.

    Immutable; its ``__init__`` fills the instance dict in one step, because a frozen dataclass's
    generated one (a call of object.__setattr__ per field) was the dearest part of resolving a handle.
    """

    auth_value: bytes
    da_protected: bool
    is_lockout: bool = False
    # The entity's Name; None when the Name is the handle (PCRs, permanent handles, sessions).
    # A sequence object's Name is the Empty Buffer (b""), as Part 1 says (no handle stands in).
    name: bytes | None = None
    auth_policy: bytes = b""
    auth_policy_alg: int = 0x0010  # TPM_ALG_NULL
    # (command code, policy session?, admin role?) -> may this entity's auth be used at all?
    auth_available: Callable[[int, bool, bool], bool] | None = None
    user_needs_policy: bool = False  # objects with userWithAuth clear
    admin_needs_policy: bool = True  # objects with adminWithPolicy clear may use their authValue
    # Told whether a use of the entity's authValue succeeded (a PIN index counts its uses and failures).
    auth_used: Callable[[bool], None] | None = None

    def __init__(self, auth_value: bytes, da_protected: bool, is_lockout: bool = False, name: bytes | None = None,
                 auth_policy: bytes = b"", auth_policy_alg: int = 0x0010,
                 auth_available: Callable[[int, bool, bool], bool] | None = None, user_needs_policy: bool = False,
                 admin_needs_policy: bool = True, auth_used: Callable[[bool], None] | None = None) -> None:
        _set_attribute(self, "__dict__", {
            "auth_value": auth_value, "da_protected": da_protected, "is_lockout": is_lockout, "name": name,
            "auth_policy": auth_policy, "auth_policy_alg": auth_policy_alg, "auth_available": auth_available,
            "user_needs_policy": user_needs_policy, "admin_needs_policy": admin_needs_policy, "auth_used": auth_used,
        })

    def name_for(self, handle: int) -> bytes:
        """The Name that goes into cpHash, policy digests and bindings for the handle of this entity."""
        return self.name if self.name is not None else handle.to_bytes(4, "big")


def cached_entity(tpm: "Tpm", handle: int, parts: tuple[object, ...]) -> Entity | None:
    """The entity a resolver made last for ``handle`` if it was made from the very same objects.

    ``parts`` are what the entity was made from (values, and the objects its callbacks read),
    compared by identity: any change to them assigns a new object, so an identical tuple means an
    identical entity, and no secret is ever compared by value.
    """
    hit = tpm.entity_cache.get(handle)
    if hit is not None and len(hit[0]) == len(parts) and all(map(operator.is_, hit[0], parts)):
        return hit[1]
    return None


def remember_entity(tpm: "Tpm", handle: int, parts: tuple[object, ...], entity: Entity) -> Entity:
    """Cache ``entity`` for ``handle`` with what it was made from (see ``cached_entity``); returns it."""
    tpm.entity_cache[handle] = (parts, entity)
    return entity


EntityResolver = Callable[["Tpm", int], Entity]
ENTITY_RESOLVERS: dict[int, EntityResolver] = {}


def entity_resolver(handle_type: int) -> Callable[[EntityResolver], EntityResolver]:
    """Register how handles of one type are looked up (existence check + auth value)."""

    def register(resolver: EntityResolver) -> EntityResolver:
        ENTITY_RESOLVERS[handle_type] = resolver
        return resolver

    return register
