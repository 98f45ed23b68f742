"""The three uanet services."""
