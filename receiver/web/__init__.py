"""HTTP: the app factory, the webhook front, the read API, errors, OpenAPI description."""
