"""ferrumc.codegen."""
