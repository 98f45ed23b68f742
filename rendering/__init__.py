"""What an urgent action says, as email and SMS: the renderer (sandboxed templates, Markdown,
pre-encoded chunks shared by every recipient), SMS segment counting, and the catalogues of
uanet's own words in each language.

Both the dispatcher (sending) and the publisher (the staff preview) use it; it depends on the
common package only, so neither service imports the other.
"""
