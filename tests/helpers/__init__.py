"""Helpers shared by the test modules (plain functions and fixtures, imported by name)."""
