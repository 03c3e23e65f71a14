"""The ``callwarden`` command line."""
