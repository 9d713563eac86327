"""Helpers shared by the test lanes and the benchmarks, imported as ``support``.

``tests/`` is on the import path through ``pythonpath = tests`` in setup.cfg
(pytest), and ``benchmarks/support`` links here for the stand-alone
comparison scripts in ``benchmarks/``.
"""
