"""Ray Data pipelines: figure-caption extraction, training input, embedding."""
