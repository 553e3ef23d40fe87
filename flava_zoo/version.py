"""The package version, in a module of its own so that any layer can read it without
importing the package root (which imports the factory and the zoo)."""

__version__ = "0.4.0"
