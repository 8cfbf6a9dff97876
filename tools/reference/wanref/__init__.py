"""Helpers for make_fixtures.py: one module per reference component.

Kept as a package (not loose modules next to the script) so that names like `text` or `vae`
can never shadow a module that torch, diffusers or transformers import.
"""
