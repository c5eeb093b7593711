"""Reports: de-identification, rule-based and LLM mining into the findings schema, canonical
global/region captions, report-derived graded relevance, and the GRAZPEDWRI-DX importer."""
