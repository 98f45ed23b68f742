"""The publisher: urgent actions and their lifecycle, API tokens, and the tally."""
