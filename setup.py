"""Build glue: the only thing setup.py adds to pyproject.toml is the cffi module."""
from setuptools import setup

setup(cffi_modules=["build_ext.py:ffibuilder"])
