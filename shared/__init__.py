"""uanet's own shared package: settings, event models, messaging, database helpers, tokens."""
