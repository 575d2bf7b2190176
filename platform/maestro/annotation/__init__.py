"""Motif's annotation pipeline: caption collection, pair sampling with de-duplication,
the annotator actor pool and the preference store."""
