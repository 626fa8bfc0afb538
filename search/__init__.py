"""Everything about the search; imports trainables, never the reverse."""
