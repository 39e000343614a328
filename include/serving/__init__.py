"""TensorFlow Serving: `models.config`, a local TF-Serving-compatible REST server, one client."""
