"""ferrumc.frontend."""
