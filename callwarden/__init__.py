"""callwarden: outbound-call compliance enforcement for Asterisk and FreeSWITCH PBXes."""

__version__ = "0.1.0"
