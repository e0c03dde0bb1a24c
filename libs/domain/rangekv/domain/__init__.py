"""The values every rangekv service agrees on, declared once.

Transaction records and their status, descriptor intents and the lock-first
descriptor transaction, the order-preserving key encodings, the key/value
limits with their one set of validation messages, and peer-list parsing.
Pure values and functions: no I/O, no clock, no asyncio. Range descriptors
themselves live in `rangekv.common.descriptors`, because the error values of
`rangekv.common.errors` carry them.
"""
