"""Strict fakes of services that cannot run on the test machines (see STYLE.md: fakes only for
those, and strict: they reject what the real service rejects)."""
