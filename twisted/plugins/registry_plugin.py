"""twistd plugin: ``twistd registry`` starts the container image registry.

Kept tiny and lazy on purpose: twistd imports every module in
``twisted/plugins`` just to list its sub-commands, so this file must not import
the registry itself.  :class:`ServiceMaker` imports ``registry.tap`` only when
the ``registry`` sub-command is used (or its options are asked for).
"""

from twisted.application.service import ServiceMaker

registry = ServiceMaker(
    "registry",
    "registry.tap",
    "Container image registry (OCI distribution-spec v1.1 / Docker Registry API v2)",
    "registry",
)
