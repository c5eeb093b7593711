"""LLM miner plumbing with a tiny randomly initialised causal LM built in the test (its text is
garbage): schema validation, one retry, fallback to the rule miner, counts, and the CLI path."""

import json

import pytest
import torch  # the `llm` extra; part of the dev environment

from wristmir_jax.errors import UserError
from wristmir_jax.reports.llm import FEW_SHOT, LLMMiner, build_prompt, parse_answer
from wristmir_jax.reports.rules import mine_report
from wristmir_jax.schema import SchemaError, empty_findings

@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {"[UNK]": 0, "[PAD]": 1, "</s>": 2}
    for w in ("{", "}", '"regions"', '"global"', ":", ",", "fracture", "distal", "radius", "no", "JSON:"):
        vocab[w] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="</s>")
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(vocab), hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=4096,
                      pad_token_id=1, eos_token_id=2, bos_token_id=2)
    model = LlamaForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) < 2000
    d = tmp_path_factory.mktemp("tiny_llm")
    model.save_pretrained(d)
    fast.save_pretrained(d)
    return str(d)


REPORTS = ["FINDINGS: Buckle fracture of the distal radius.",
           "FINDINGS: No acute fracture. Left wrist.",
           "FINDINGS: Possible avulsion fracture of the ulnar styloid. Cast in place."]


def test_garbage_output_retries_once_then_falls_back(tiny_model_dir):
    miner = LLMMiner(tiny_model_dir, max_new_tokens=6)
    calls = []
    real_generate = miner.generate

    def counting_generate(prompt):
        calls.append(prompt)
        return real_generate(prompt)

    miner.generate = counting_generate
    for rep in REPORTS:
        regions, g, label = miner.mine(rep)
        assert label == "fallback"
        assert (regions, g) == mine_report(rep)
    assert miner.counts == {"llm": 0, "retry": len(REPORTS), "fallback": len(REPORTS)}
    assert len(calls) == 2 * len(REPORTS)
    assert "previous answer" in calls[1] and "previous answer" not in calls[0]


def test_valid_answers_are_used_and_one_retry_can_succeed(tiny_model_dir):
    regions, g = empty_findings()
    regions["distal_radius"].update(fracture="present", pattern="buckle")
    good = "Sure. " + json.dumps({"regions": regions, "global": g}) + " done"
    bad_schema = json.dumps({"regions": {**regions, "distal_radius": {**regions["distal_radius"], "pattern": "spiral"}},
                             "global": g})
    script = iter([good, bad_schema, good, "not json", "{broken"])
    miner = LLMMiner(tiny_model_dir, max_new_tokens=4)
    miner.generate = lambda prompt: next(script)
    r1 = miner.mine("report one")
    r2 = miner.mine("report two")
    r3 = miner.mine("FINDINGS: Torus fracture of the distal ulna.")
    assert r1 == (regions, g, "llm") and r2 == (regions, g, "llm")
    assert r3[2] == "fallback" and r3[0]["distal_ulna"]["pattern"] == "buckle"
    assert miner.counts == {"llm": 2, "retry": 2, "fallback": 1}


def test_parse_answer_validates_against_the_schema():
    regions, g = empty_findings()
    ok = json.dumps({"regions": regions, "global": g})
    assert parse_answer("JSON: " + ok) == (regions, g)
    with pytest.raises(ValueError):
        parse_answer("no json here")
    with pytest.raises(ValueError):
        parse_answer('{"regions": 1}')
    bad = {"regions": {**regions, "distal_ulna": {**regions["distal_ulna"], "healing": True}}, "global": g}
    with pytest.raises(SchemaError):  # healing on an absent fracture breaks the schema's rules
        parse_answer(json.dumps(bad))


def test_prompt_has_schema_examples_and_report():
    p = build_prompt("FINDINGS: torus fracture.")
    assert '"salter_harris"' in p and "other_fracture" in p
    assert p.count("Report:") == len(FEW_SHOT) + 1 and p.rstrip().endswith("JSON:")
    for _, answer in FEW_SHOT:
        regions, g = parse_answer(answer)  # the few-shot answers are themselves valid
        assert set(regions) == {"distal_radius", "distal_ulna", "ulnar_styloid"}


def test_missing_model_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        LLMMiner(str(tmp_path / "nope"))


def test_cli_llm_miner_counts_fallbacks(tiny_model_dir, tmp_path, capsys):
    from wristmir_jax.cli.main import main

    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"id": f"r{i}", "report": r}) + "\n" for i, r in enumerate(REPORTS)))
    out = tmp_path / "mined.jsonl"
    with pytest.raises(SystemExit) as e:
        main(["mine", "--manifest", str(manifest), "--out", str(out), "--miner", "llm", "--model",
              tiny_model_dir, "--max-new-tokens", "4"])
    assert e.value.code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["miner"] for r in rows] == ["fallback"] * len(REPORTS)
    assert "read 3 = mined 3 + rejected 0" in capsys.readouterr().out
