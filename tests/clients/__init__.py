"""Real-client tests: docker, skopeo and podman against a running registry."""
