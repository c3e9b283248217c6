"""InferMesh scheduler."""
