"""Protocol simulators used by callwarden's tests (see tests/sim/asterisk.py)."""
