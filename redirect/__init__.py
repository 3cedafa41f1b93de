"""redirect: run a program with its IP sockets turned into Unix domain sockets, by rules."""

__version__ = "0.1.0"
