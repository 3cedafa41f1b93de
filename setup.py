"""The one compiled part, optional: without a C compiler redirect installs
and runs the same, the notify backend's calls of each new connection made
in Python (-v says so)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("redirect._fastpath", ["redirect/_fastpath.c"], optional=True,
                             extra_compile_args=["-O2", "-Wall"], extra_link_args=["-pthread"])])
