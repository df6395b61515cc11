"""PubMed Central figure-caption extraction, without Ray: sources, safe JATS parsing, image normalisation, filters,
splits. The Ray Data pipeline that runs these at scale is `biomedclip.data.extract`."""
