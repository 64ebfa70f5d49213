"""The front door's edge features that nginx users rely on, each in a module of its own."""
