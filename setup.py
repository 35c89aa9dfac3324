"""Builds the optional C frame walker; everything else is in pyproject.toml."""

from setuptools import Extension, setup

# optional: without a C compiler the install still succeeds and proxy/frames.py walks in Python.
setup(ext_modules=[Extension("proxy._frames", ["proxy/_frames.c"], optional=True)])
