"""Recordings: finalize, retention purge, legal holds, verify (issue 5)."""
