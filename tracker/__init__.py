"""Private BitTorrent tracker, revision registry and mirror scheduler for hfbt."""
