"""Access control: who may do what to which repository.

Two controllers, chosen by the ``auth`` configuration section:
``htpasswd`` (Basic authentication against bcrypt entries; an authenticated
user may do everything) and ``token`` (Docker's token authentication: JWTs
from a token server, with grants per repository). Both implement
``IAccessController``; ``required_access`` computes what a request needs
from its method and route, and ``filter_catalog`` trims the catalog to what
an identity may see. The HTTP layer calls them before a request's body is
read and sends ``AuthChallenge`` like any other ``RegistryError``.
"""

from registry.auth.factory import access_controller_from_config, filter_catalog
from registry.auth.interfaces import Access, AuthChallenge, Credentials, IAccessController, Identity
from registry.auth.scopes import credentials_from_request, required_access, scope_param

__all__ = [
    "Access",
    "AuthChallenge",
    "Credentials",
    "IAccessController",
    "Identity",
    "access_controller_from_config",
    "credentials_from_request",
    "filter_catalog",
    "required_access",
    "scope_param",
]
