"""ferrumc.server."""
