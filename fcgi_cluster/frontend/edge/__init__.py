"""The front door's edge features nginx users rely on: real client addresses, the PROXY protocol,
X-Accel-Redirect, compression, request limits, the response cache."""
