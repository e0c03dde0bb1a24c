"""The `rangekv` command line: run a local cluster, talk to a gateway, benchmark."""
