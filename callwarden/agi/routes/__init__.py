"""FastAGI routes, one module each; importing this package registers them all in ROUTES."""

from callwarden.agi.routes import inbound, optout, outbound  # noqa: F401  (registers the routes)
from callwarden.agi.routes.registry import ROUTES, CallReport, Route, RouteContext, register

__all__ = ["ROUTES", "CallReport", "Route", "RouteContext", "register"]
