"""Helpers shared by test modules (tests import helpers from here, never from another test module)."""
