"""Plumbing every rangekv process shares: descriptors, errors and their wire mapping, clocks, config, servers."""
