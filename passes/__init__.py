"""ferrumc.passes."""
