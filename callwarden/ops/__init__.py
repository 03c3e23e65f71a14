"""Operations: what the running service tells its operators (metrics, health), the checks of
``callwarden doctor``, and the bridge that lets the FreeSWITCH process report to ``serve``.

The Prometheus metrics themselves are in :mod:`callwarden.metrics`.
"""
