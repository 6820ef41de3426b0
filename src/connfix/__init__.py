"""connfix: incident response for PostgreSQL connection exhaustion."""

__version__ = "0.1.0"
