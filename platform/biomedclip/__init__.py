"""BiomedCLIP: a CLIP model for biomedical figures and captions, and the pieces to build, train, evaluate and
serve it."""
