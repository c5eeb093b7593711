"""Procedural pediatric wrist radiographs with bone boxes, free-text reports and gold findings:
the built-in, deterministic dataset (`wristmir synth`)."""
