"""The front door's edge features: real client addresses, the PROXY protocol, X-Accel-Redirect, and the like."""
