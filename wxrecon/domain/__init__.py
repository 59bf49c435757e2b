"""The rules, without I/O: order kinds as data, state machines, schedules, decisions."""
