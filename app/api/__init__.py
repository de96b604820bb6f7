"""REST API routers (JSON under /api)."""
