"""InferMesh store."""
