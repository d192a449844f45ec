"""Out-of-process storage drivers: wire protocol, child supervisor and child-side server."""
