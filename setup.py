"""Build hook for the one compiled part: the AES-XTS data-unit loop over OpenSSL.

Everything else is declared in setup.cfg. The extension is optional: without
OpenSSL headers the package still installs and vmcrypt.xts falls back to a
slower pure-`cryptography` path (vmcrypt.xts.BACKEND says which one runs).
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
        )
    ]
)
