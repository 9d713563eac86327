"""The loaded-object table: transient slots (loaded objects and sequence objects) and
persistent objects, which load from NV on first use."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vtpm.constants import HT, RC, TRANSIENT_FIRST
from vtpm.core import Entity, entity_resolver, handle_spec
from vtpm.entities.hierarchy import hierarchy_enabled
from vtpm.entities.sequences import HashSequence
from vtpm.errors import TpmError
from vtpm.objects import LoadedObject, Public, Sensitive

if TYPE_CHECKING:
    from vtpm.engine import Tpm

MAX_LOADED_OBJECTS = 3
OBJECT_HANDLE = handle_spec("objectHandle", types=[HT.TRANSIENT, HT.PERSISTENT])


def get_object(tpm: Tpm, handle: int, number: int = 1) -> LoadedObject:
    """A loaded transient object or a persistent object (loaded from NV on demand)."""
    if handle >> 24 == HT.PERSISTENT:
        return _persistent(tpm, handle)
    obj = tpm.volatile.objects.get(handle)
    if not isinstance(obj, LoadedObject):
        raise TpmError(RC.HANDLE, handle=number)
    return obj


def _persistent(tpm: Tpm, handle: int) -> LoadedObject:
    cache = tpm.volatile.persistent_cache
    if handle in cache:
        return cache[handle]
    entry = tpm.state.persistent.get(handle)
    if entry is None:
        raise TpmError(RC.HANDLE)
    sensitive = Sensitive.parse_tpm2b(entry["sensitive"]) if entry.get("sensitive") else None
    obj = LoadedObject(Public.parse(entry["public"]), sensitive, entry["hierarchy"], entry["qualified_name"])
    cache[handle] = obj
    return obj


@entity_resolver(HT.PERSISTENT)
def persistent_entity(tpm: Tpm, handle: int) -> Entity:
    """The entity of a persistent object; TPM_RC_HANDLE while its hierarchy is disabled."""
    obj = _persistent(tpm, handle)
    if not hierarchy_enabled(tpm, obj.hierarchy):
        raise TpmError(RC.HANDLE)
    return obj.entity()


def allocate_transient(tpm: Tpm, obj: Any) -> int:
    """Load ``obj`` into the lowest free transient handle; TPM_RC_OBJECT_MEMORY when every slot is taken."""
    objects = tpm.volatile.objects
    if len(objects) >= MAX_LOADED_OBJECTS:
        raise TpmError(RC.OBJECT_MEMORY)
    handle = TRANSIENT_FIRST
    while handle in objects:
        handle += 1
    objects[handle] = obj
    return handle


@entity_resolver(HT.TRANSIENT)
def transient_entity(tpm: Tpm, handle: int) -> Entity:
    """The entity of a loaded object or sequence object (a sequence's Name is empty); TPM_RC_REFERENCE_H0 for a handle
    with nothing loaded."""
    obj = tpm.volatile.objects.get(handle)
    if obj is None:
        raise TpmError(RC.REFERENCE_H0)
    if isinstance(obj, HashSequence):
        return Entity(obj.auth_value, da_protected=False, name=b"")  # a sequence object's Name is empty
    return obj.entity()


def clear_hierarchy_objects(tpm: Tpm, hierarchies: tuple[int, ...]) -> None:
    """TPM2_Clear (owner) and ChangeEPS (endorsement) evict the hierarchy's persistent objects."""
    for handle, entry in list(tpm.state.persistent.items()):
        if entry["hierarchy"] in hierarchies:
            del tpm.state.persistent[handle]
            tpm.volatile.persistent_cache.pop(handle, None)
    for handle, obj in list(tpm.volatile.objects.items()):
        if isinstance(obj, LoadedObject) and obj.hierarchy in hierarchies:
            del tpm.volatile.objects[handle]
    tpm.state.primary_cache.clear()
    tpm.mark_dirty()
