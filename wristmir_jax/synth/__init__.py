"""Procedural pediatric wrist radiographs with bone boxes, free-text reports and gold findings:
the built-in, deterministic dataset (`wristmir synth`).

Public API: `generate(out_dir, n, seed=0, image_size=512, overwrite=False, prevalence=None,
workers=None) -> summary dict`; `Prevalence` (default rates, overridable by a dict);
`plan_dataset`, `render_one`, `compose_report` for finer use.
"""

from wristmir_jax.synth.findings import Prevalence, plan_dataset
from wristmir_jax.synth.dataset import generate, render_one, summarize
from wristmir_jax.synth.report import compose_report

__all__ = ["Prevalence", "compose_report", "generate", "plan_dataset", "render_one", "summarize"]
