"""The ``uanet`` command: above the services it drives (serve, migrate, tokens, users,
subscribers, dead letters, ``up``), so the common package and the services import none of it.
"""
