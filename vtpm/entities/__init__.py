"""The TPM's entities: the layer between ``vtpm.core`` and the command modules.

Hierarchies, loaded objects, sequence objects, sessions, PCRs, NV indices,
dictionary-attack state, the clock, and what several chapters of Part 3 do
with them (key checks, creation data, tickets, attestation). Each module
registers the entity resolver for its handles, imports only downward (core,
constants, crypto, marshal, state, errors, objects, keyops, sessions and other
entity modules) and never a command module. ``vtpm.engine`` imports the
modules that register resolvers.
"""
