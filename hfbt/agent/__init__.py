"""The node side: pulls into the HF cache, the agent daemon that keeps seeding, its control API."""
