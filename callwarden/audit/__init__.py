"""Auditor access: search calls, pull recordings, export and verify evidence bundles, reports.

Modules, one job each:

- ``access``: who is asking (``Scope``: actor plus an optional tenant scope) and the audit-log
  entry every evidence access writes.
- ``filters``: the search filters shared by ``audit search``, ``audit export`` and reports.
- ``search``: the query and the public row format of ``audit search``.
- ``snapshot``: consistent read-only sessions that never hold up call decisions.
- ``bundle``: layout and manifest of an evidence bundle, and reading one back (zip or folder).
- ``export``: writing a bundle, streaming recordings into the zip.
- ``verify_bundle``: checking a bundle offline.
- ``report``: the figures of a per-tenant compliance report; ``report_render`` and ``charts``
  turn them into HTML (with inline SVG charts, template in ``templates/``), JSON or CSV.
- ``jsonable``: plain JSON values from store rows.
- ``pseudonym``: numbers in audit entries as keyed hash + masked form; the installation key.
- ``entries``: the audit-log entries about one number (keyed or, from before, in clear).
"""
