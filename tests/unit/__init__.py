"""Pure tests: no database, no server, no process."""
