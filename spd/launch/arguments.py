"""Checks of command-line values that are lists or names, shared by the launcher's options."""

from spd.errors import SPDUserError


def comma_list(text: str, option: str) -> list[str]:
    """The items of a comma-separated option value; an empty item (`a,,b`, a trailing comma, an
    empty value) is an error rather than silently skipped."""
    items = [item.strip() for item in text.split(",")]
    if not any(items):
        raise SPDUserError(f"{option} is empty; give comma-separated names, e.g. {option} tms_5-2")
    if not all(items):
        position = items.index("") + 1
        raise SPDUserError(
            f"{option} '{text}' has an empty name (item {position}); remove the extra comma"
        )
    return items
