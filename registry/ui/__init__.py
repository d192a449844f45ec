"""The web page: browse repositories, tags and manifests under
``<http.prefix>ui/`` on the main listener (``ui.enabled``; on by default when
the registry listens on loopback only).

Server-rendered HTML (``twisted.web.template``), read through the same data
model as the API and under the same access controller. ``resource`` routes
and answers, ``views`` gathers the data, ``pages`` makes the HTML, ``csrf``
guards the delete forms, ``static/style.css`` is the one stylesheet.
"""

from registry.ui.resource import UIResource

__all__ = ["UIResource"]
