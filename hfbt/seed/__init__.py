"""The seed service: mirrors revisions from the origin once and seeds their blob torrents."""
