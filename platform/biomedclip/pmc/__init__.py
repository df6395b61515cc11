"""PubMed Central figure-caption extraction, without Ray: sources, safe JATS parsing, image normalisation, filters,
splits, the sample corpus. The Ray Data pipeline that runs these at scale is `biomedclip.data.extract`."""
