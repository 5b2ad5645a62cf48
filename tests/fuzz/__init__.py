"""Fuzz suite data (OpenAPI documents of the shim and serve-dir) and the helpers its tests share."""
