"""Crash-safe files: the bottom layer that vtpm, certs and vmcrypt all write through.

It imports none of them.
"""
