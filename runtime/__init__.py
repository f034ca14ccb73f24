"""ferrumc.runtime."""
