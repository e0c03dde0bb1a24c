"""The gateway (DistSender): the public KV API, the range descriptor cache, routing and retries."""
