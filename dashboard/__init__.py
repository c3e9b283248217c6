"""InferMesh dashboard."""
