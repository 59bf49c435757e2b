"""Real databases, Redis, sockets and the simulator, one component at a time."""
