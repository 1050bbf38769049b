"""Command-line entry points (`spd-run`)."""
