"""InferMesh agent."""
