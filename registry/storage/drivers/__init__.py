"""Storage driver implementations."""
