"""A container image registry on Twisted with a C hashing core."""

__version__ = "0.1.0"
