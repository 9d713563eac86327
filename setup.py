"""Build hook for the compiled parts, both over OpenSSL: the AES-XTS data-unit loop
(vmcrypt._xts) and the event log / IMA list parse and replay loops (vtpm._measure).

Everything else is declared in setup.cfg. The extensions are optional: without
OpenSSL headers the package still installs and falls back to slower pure-Python
paths (vmcrypt.xts.BACKEND and vtpm.eventlog.BACKEND say which one runs).
"""
from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "vmcrypt._xts",
            sources=["vmcrypt/_xts.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
        Extension(
            "vtpm._measure",
            sources=["vtpm/_measure.c"],
            libraries=["crypto"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
    ]
)
