"""The one compiled part: the bundle scan's loop (audit/_native.c), built at install time.

It is optional: where no C compiler is found the install goes on, and :mod:`audit.leafscan` runs
the same loop in Python (slower, same results). Everything else is in pyproject.toml.
"""

from setuptools import Extension, setup

# libcrypto (OpenSSL 3): SHA-256, as hashlib has it, and keyed BLAKE2b.
native = Extension("audit._native", ["audit/_native.c"], libraries=["crypto"], optional=True)
setup(ext_modules=[native])
