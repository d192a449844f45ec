"""twisted.web resources: thin HTTP layer over registry.storage."""
