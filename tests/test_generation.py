"""The kit's sampling loop (resampling and PPO rollouts) against transformers' generate()."""
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from mpo_lib.method.resample import decode_responses, generate, penalise_repeats, sample_batch
from mpo_lib.reporting.evaluation import loops

from conftest import DATA_DIR

STORIES = DATA_DIR / "models" / "stories260k"
PROMPTS = ["Once upon a time, there was a little", "Tom had a big red ball. One day,", "The sun"]


def stories():
    return AutoModelForCausalLM.from_pretrained(STORIES).eval(), AutoTokenizer.from_pretrained(STORIES)


def test_near_greedy_sampling_matches_generate_with_left_padding():
    model, tokenizer = stories()
    torch.manual_seed(0)
    ids, prompt_mask, _prompt_length = sample_batch(model, tokenizer, PROMPTS, 2, 12, temperature=1e-4)
    tokenizer.padding_side = "left"
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    expected = model.generate(**batch, do_sample=False, max_new_tokens=12, pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(prompt_mask, batch["attention_mask"].repeat_interleave(2, 0))
    for row in range(len(ids)):  # both samples of a prompt are its greedy continuation
        assert ids[row].tolist() == expected[row // 2].tolist()[: ids.shape[1]], row


def test_a_sequence_leaves_the_batch_at_the_stop_string():
    model, tokenizer = stories()
    torch.manual_seed(0)
    ids, _, prompt_length = sample_batch(model, tokenizer, PROMPTS, 2, 40, stop=".")
    texts, _ = decode_responses(tokenizer, ids, prompt_length, ".")
    raw = tokenizer.batch_decode(ids[:, prompt_length:], skip_special_tokens=True)
    for text, full, row in zip(texts, raw, ids[:, prompt_length:]):
        assert "." not in text
        if "." in full:  # stopped: nothing was sampled after the stop string, only padding
            assert full.rstrip().endswith(".")
            end = int((row != tokenizer.pad_token_id).nonzero().max())
            assert (row[end + 1:] == tokenizer.pad_token_id).all()


def test_generate_returns_samples_in_prompt_order():
    model, tokenizer = stories()
    samples = generate(model, tokenizer, PROMPTS * 3, num_samples=2, max_new_tokens=8, batch_size=4,
                       temperature=1e-4)
    assert [len(pair) for pair in samples] == [2] * 9
    assert samples[0] == samples[3] == samples[6] and samples[1] == samples[4]  # same prompt, same continuation
    assert samples[0] != samples[1]


def test_the_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_generated_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    penalised = penalise_repeats(logits, torch.tensor([[0, 1, 0]]), 2.0)  # tokens 0 and 1 generated (0 twice)
    assert penalised.tolist() == [[1.0, -2.0, 0.5, 3.0]]  # once per token, however often it came


def test_a_greedy_loop_of_a_small_model_is_broken_by_the_repetition_penalty():
    model, tokenizer = stories()
    answers = {}
    for penalty in (1.0, 1.3):
        ids, _, prompt_length = sample_batch(model, tokenizer, PROMPTS, 1, 80, temperature=0, repetition_penalty=penalty)
        answers[penalty] = decode_responses(tokenizer, ids, prompt_length, None)[0]
    assert [loops(a) for a in answers[1.0]] == [False, True, False]  # "Tom had a big red ball. ..." loops greedily
    assert not any(loops(a) for a in answers[1.3])
