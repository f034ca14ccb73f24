"""ferrumc.frontend.models."""
