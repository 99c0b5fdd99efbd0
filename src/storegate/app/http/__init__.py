"""The HTTP surface (FastAPI on uvicorn, in the gateway's event loop): operations,
staff screens and the customer app channel. One module per concern:

``server``    the app factory (``build_app``) and ``serve`` (uvicorn as a gateway task)
``security``  principals, per-route access rules, sessions, rate limits, headers
``ops``       /healthz, /readyz, /metrics, the admin API and page
``staff``     staff sign-in and sessions (the till and floor screens build on it)
``customer``  the customer app channel (token-authenticated)
``models``    request/response bodies and declared error responses

docs/http.md describes routes, roles, configuration and TLS.
"""
