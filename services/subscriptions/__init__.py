"""Subscriptions: subscribers, consent and preferences, audiences, public pages, inbound SMS."""
