"""Jinja2 templates for what `guestctl deploy` writes (package data, loaded by name)."""
