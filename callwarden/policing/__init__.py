"""Seat-rental policing (MIIT 2020-81 §5(1)): find tenants that telemarket or call without
consent, from patterns across many calls, and stop them.

``figures`` measures each tenant over rolling windows, ``sequences`` finds generated number
lists, ``scoring`` turns figures into an explainable score, ``filing`` lists overdue re-filings
and missing proof documents, ``actions`` raises alerts and suspends, ``webhook`` notifies,
``runner`` runs the pass under a database lock, ``complaints`` records callee complaints.
See docs/policing.md.
"""

from callwarden.policing.runner import Assessment, Detector, PassResult

__all__ = ["Assessment", "Detector", "PassResult"]
