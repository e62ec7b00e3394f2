"""Serving: model versions side by side on Ray Serve (see its issue)."""
