"""The web console: auditors search calls, play recordings and export evidence in a browser;
admins and tenants see risk. Built on callwarden.audit, recorder, policing and store: it adds
no second copy of search, export or scoring logic."""
