"""The lake: layout, Arrow schemas and Parquet files (format apart from location)."""
