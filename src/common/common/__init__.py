"""Shared library of the Mega Pipeline: the contracts every container agrees on."""
