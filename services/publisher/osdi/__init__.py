"""OSDI 1.1 (https://opensupporter.github.io/osdi-docs/) on the publisher, read-only: the entry
point, advocacy campaigns (the published urgent actions) and their outreaches (the letters
subscribers wrote from the action page).

``resources`` is the wire format (the specification's names), ``outreaches`` keeps the letters as
they are reported (queue ``publisher.outreaches``), ``routes`` serves them to coordinators.
"""
