"""Builds the optional C parts of the relay; everything else is in pyproject.toml."""

import sys

from setuptools import Extension, setup

# Both optional: without a C compiler the install still succeeds, proxy/frames.py walks frames in
# Python and every session stays on the asyncio relay. proxy._relay (epoll) is Linux-only.
shared = ["proxy/_text.h"]  # frame headers and the name search, used by both
extensions = [Extension("proxy._frames", ["proxy/_frames.c"], depends=shared, optional=True)]
if sys.platform.startswith("linux"):
    extensions.append(Extension("proxy._relay", ["proxy/_relay.c"], depends=shared, optional=True))
setup(ext_modules=extensions)
