"""Data generators for the toy experiments."""
