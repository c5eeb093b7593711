"""The LLM report miner: any local causal language model (a folder that transformers'
AutoTokenizer / AutoModelForCausalLM can load, PyTorch backend, never downloaded at run time) is
prompted with the findings schema and few-shot examples, decodes greedily, and its JSON answer is
validated against the schema. An invalid answer gets one retry with the validation error in the
prompt; a second failure falls back to the rule miner for that report (label "fallback").

torch is an optional dependency (`pip install 'wristmir-jax[llm]'`) imported only here, lazily.
"""

from __future__ import annotations

import json
import os
from typing import Any

from wristmir_jax.errors import UserError
from wristmir_jax.reports.rules import mine_report
from wristmir_jax.schema import REGIONS, SchemaError, empty_findings, validate_findings

SCHEMA_TEXT = """Answer with one JSON object and nothing else:
{"regions": {"distal_radius": R, "distal_ulna": R, "ulnar_styloid": R}, "global": G}
R = {"fracture": "present"|"absent"|"uncertain",
     "pattern": "buckle"|"greenstick"|"complete"|"salter_harris"|"avulsion"|"plastic_bowing"|null,
     "salter_harris": 1-5 or null (only with pattern "salter_harris"),
     "displaced": true|false|null, "angulated": true|false|null, "healing": true|false}
G = {"laterality": "left"|"right"|null, "cast": true|false, "hardware": true|false,
     "soft_tissue_swelling": true|false, "other_fracture": true|false}
Rules: only FINDINGS and IMPRESSION describe the current study (not HISTORY, INDICATION or
COMPARISON). Hedged findings ("possible", "cannot exclude", "suspicious for") are "uncertain".
A region without a fracture has pattern null, salter_harris null, displaced null, angulated null,
healing false. Fractures of other bones (scaphoid, metacarpals, forearm shafts) set
other_fracture and are not put in the three regions. null means not stated."""


def _example(report: str, changes: dict[str, dict[str, Any]], glob: dict[str, Any]) -> tuple[str, str]:
    regions, g = empty_findings()
    for name, upd in changes.items():
        regions[name].update(upd)
    g.update(glob)
    validate_findings(regions, g)
    return report, json.dumps({"regions": regions, "global": g}, separators=(",", ":"))


FEW_SHOT: tuple[tuple[str, str], ...] = (
    _example("TECHNIQUE: Three views of the left wrist. FINDINGS: Buckle fracture of the dorsal cortex of "
             "the distal radial metaphysis without displacement. The ulna is intact. Mild soft tissue "
             "swelling. IMPRESSION: Distal radius buckle fracture.",
             {"distal_radius": {"fracture": "present", "pattern": "buckle", "displaced": False}},
             {"laterality": "left", "soft_tissue_swelling": True}),
    _example("HISTORY: Fall, pain. FINDINGS: Right wrist in a fiberglass cast. Salter-Harris II fracture of "
             "the distal radius with dorsal displacement of the epiphysis and apex volar angulation. "
             "Possible nondisplaced fracture of the ulnar styloid.",
             {"distal_radius": {"fracture": "present", "pattern": "salter_harris", "salter_harris": 2,
                                "displaced": True, "angulated": True},
              "ulnar_styloid": {"fracture": "uncertain", "displaced": False}},
             {"laterality": "right", "cast": True}),
    _example("FINDINGS: No acute fracture of the distal radius or ulna. Nondisplaced fracture of the "
             "scaphoid waist.", {}, {"other_fracture": True}),
)


def build_prompt(report: str, error: str | None = None) -> str:
    """The full text prompt: schema, few-shot examples, the report (and a retry note)."""
    parts = ["You extract structured findings from pediatric wrist radiograph reports.", SCHEMA_TEXT, ""]
    for rep, ans in FEW_SHOT:
        parts += [f"Report: {rep}", f"JSON: {ans}", ""]
    if error:
        parts.append(f"Your previous answer for the next report was invalid ({error}). "
                     "Answer with valid JSON only.")
    parts += [f"Report: {report}", "JSON:"]
    return "\n".join(parts)


def parse_answer(text: str) -> tuple[dict, dict]:
    """The first JSON object in `text` that holds valid findings; ValueError / SchemaError if none."""
    decoder = json.JSONDecoder()
    last_error = "no JSON object in the answer"
    for i, ch in enumerate(text):
        if ch != "{":
            continue
        try:
            obj, _ = decoder.raw_decode(text, i)
        except json.JSONDecodeError as e:
            last_error = f"invalid JSON ({e.msg})"
            continue
        if not isinstance(obj, dict) or "regions" not in obj or "global" not in obj:
            last_error = "JSON object lacks 'regions' and 'global'"
            continue
        regions, g = obj["regions"], obj["global"]
        validate_findings(regions, g)
        return {r: dict(regions[r]) for r in REGIONS}, dict(g)
    raise ValueError(last_error)


class LLMMiner:
    """`mine(report) -> (regions, global_, label)` with label "llm" or "fallback"; counts in
    `self.counts` ({"llm", "retry", "fallback"})."""

    def __init__(self, model_dir: str, *, max_new_tokens: int = 320, device: str = "cpu"):
        if not os.path.isdir(model_dir):
            raise UserError("model folder not found", path=model_dir)
        try:
            import torch  # noqa: F401
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:
            raise UserError(f"the LLM miner needs PyTorch (pip install 'wristmir-jax[llm]'): {e}") from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
            # dtype "auto": keep the checkpoint's dtype (a bf16 7B model stays 14 GB, not 28).
            # use_safetensors: a pytorch_model.bin (pickle) is refused, never torch.load-ed.
            self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True,
                                                              dtype="auto", use_safetensors=True)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load a causal LM from this folder ({type(e).__name__})", path=model_dir) from None
        self.model.to(device)
        self.model.eval()
        self.device = device
        self.max_new_tokens = int(max_new_tokens)
        self.counts = {"llm": 0, "retry": 0, "fallback": 0}

    def _prompt_text(self, prompt: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                                      add_generation_prompt=True)
        return prompt

    def generate(self, prompt: str) -> str:
        """Greedy decoding of the model's continuation of `prompt` (special tokens removed)."""
        import torch

        enc = self.tokenizer(self._prompt_text(prompt), return_tensors="pt")
        enc = {k: v.to(self.device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        pad = self.tokenizer.pad_token_id
        if pad is None:
            pad = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=pad)
        new = out[0, enc["input_ids"].shape[1]:]
        return self.tokenizer.decode(new, skip_special_tokens=True)

    def mine(self, report: str) -> tuple[dict, dict, str]:
        error = None
        for attempt in range(2):
            if attempt:
                self.counts["retry"] += 1
            answer = self.generate(build_prompt(report, error))
            try:
                regions, g = parse_answer(answer)
            except (ValueError, SchemaError) as e:
                error = str(e)[:200]
                continue
            self.counts["llm"] += 1
            return regions, g, "llm"
        self.counts["fallback"] += 1
        regions, g = mine_report(report)
        return regions, g, "fallback"
