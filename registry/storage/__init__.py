"""The registry data model on top of a storage driver."""
