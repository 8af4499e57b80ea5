"""The package version, in a module of its own so library modules can record it without importing the package
(whose ``load_model`` imports the loaders)."""

__version__ = "0.1.0"
