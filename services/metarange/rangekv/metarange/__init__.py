"""The meta range service: descriptor records (committed versions and intents), lookups, store registry."""
