"""The HF_ENDPOINT shim: a Hub-compatible API on the node, metadata from the tracker, bytes from the swarm."""
