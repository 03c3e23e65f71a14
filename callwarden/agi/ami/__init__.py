"""The AMI side of the Asterisk adapter: CDR completion, caller-ID policing, reconciliation."""

from callwarden.agi.ami.listener import AmiListener
from callwarden.agi.ami.tracker import CallTracker
from callwarden.agi.ami.tuning import AmiTuning

__all__ = ["AmiListener", "AmiTuning", "CallTracker"]
