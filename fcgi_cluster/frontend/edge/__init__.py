"""The front door's edge features nginx users rely on: compression, request limits."""
