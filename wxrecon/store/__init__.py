"""Everything that talks to the database: the schema, every statement, the unit of work."""
