"""Personalisation on the box, pure: registry, consent, campaigns, offers, tokens."""
