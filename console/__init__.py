"""InferMesh console."""
