"""The engine: intake, an order's steps (load, call, decide, write), sweeps, operators."""
