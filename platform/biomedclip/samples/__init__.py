"""Generated sample data for the demo, tests and benchmarks: nothing a production run imports.

- `corpus`: a synthetic PubMed Central corpus (JATS + figures) in the Cloud Service, tar or folder layout.
- `figures`: the figures it draws, with captions that state what they show.
- `vqa`: a VQA set derived from an extraction's pairs (questions about the drawn facts).
- `shapes`: a small grounded image-caption set in the pair Parquet layout, for training tests.
"""
