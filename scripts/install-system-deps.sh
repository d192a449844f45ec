#!/usr/bin/env bash
# Installs the Debian packages the test suite drives for real.  Idempotent.
# Filled in as the real-client tests arrive; today nothing is required.
set -euo pipefail
exit 0
