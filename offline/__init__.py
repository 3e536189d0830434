"""The offline store (PostgreSQL): writing feature rows into its tables, and point-in-time training sets read
from them."""
