"""Development tools: mail catcher, SMS outbox (a Twilio-compatible endpoint), `uanet up`."""
