"""setuptools entry point: only the cffi hook lives here, metadata is in pyproject.toml.

`pip install -e .` runs labkit/build.py:ffibuilder, which compiles native/src into a
-Werror-clean static archive and hands cffi the wrapper that links it as labkit._native.
"""

from setuptools import setup

setup(cffi_modules=["labkit/build.py:ffibuilder"])
