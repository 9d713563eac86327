"""Crash-safe files: the bottom layer that vtpm, certs and vmcrypt all write through.

``atomic``: replace a file whole (old or new, never a mix). ``prealloc``: an
append-only file whose blocks are written ahead, so an append is durable with
one data-only ``fdatasync`` (the vTPM state journal).

It imports none of them.
"""
