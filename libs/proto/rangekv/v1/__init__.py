"""Generated stubs of the rangekv.v1 wire contract (scripts/gen_protos.py)."""
