import pytest

from mpo_lib.reporting.judge import (
    JUDGE_PROMPT,
    LocalChatJudge,
    OpenAIJudge,
    RewardMarginJudge,
    TextJudge,
    judge_pairs,
    judge_prompt,
    parse_scores,
)
from mpo_lib.runtime.artifacts import write_json

from conftest import SECRET, answer_by_quality, responses_of


@pytest.mark.parametrize("text, expected", [
    (("Response 1 Quality Score: 7\n\nExplanation: Accurate and concise.\n\n"
      "Response 2 Quality Score: 4 Explanation: Off topic."), (7.0, 4.0)),
    ("**Response 1 Quality Score:** 8\nExplanation: good.\n**Response 2 Quality Score: 6**\nExplanation: ok.",
     (8.0, 6.0)),
    ("Response 1 Quality Score: 8/10\nExplanation: ...\nResponse 2 Quality Score: 9 / 10", (8.0, 9.0)),
    ("Response 1 Quality Score: 7.5\nresponse 2 quality score: 6.25", (7.5, 6.25)),
    ("RESPONSE 1 QUALITY SCORE :   3\n\nRESPONSE  2  QUALITY  SCORE:0", (3.0, 0.0)),
    ("Response 1 Quality Score: 5 Explanation: fine. Response 2 Quality Score: 10 Explanation: great.", (5.0, 10.0)),
    (("Output format\nResponse 1 Quality Score: x\nResponse 2 Quality Score: x\n\n"  # the template echoed first
      "Response 1 Quality Score: 6\nExplanation: the Response 1 quality score is lower because ...\n"
      "Response 2 Quality Score: 2"), (6.0, 2.0)),
    (("Response 1 Quality Score: 6\nResponse 2 Quality Score: 2\n\n"  # a restated final verdict counts
      "On reflection: Response 1 Quality Score: 7, Response 2 Quality Score: 3"), (7.0, 3.0)),
])
def test_parser_reads_realistic_answers(text, expected):
    assert parse_scores(text) == expected


@pytest.mark.parametrize("text", [
    "Response 1 Quality Score: 7\nExplanation: good.",                  # second score missing
    "Response 1 Quality Score: N/A\nResponse 2 Quality Score: 7",         # not a number
    "Response 1 Quality Score: 11/10\nResponse 2 Quality Score: 7",       # outside 0-10
    "Response 1 Quality Score: 12\nResponse 2 Quality Score: 7",
    "Response 1 Quality Score: -1\nResponse 2 Quality Score: 7",
    "Response 1 Quality Score: 4/5\nResponse 2 Quality Score: 3/5",       # not out of 10
    "Response 1 Quality Score: x\n\nExplanation: xxx\n\nResponse 2 Quality Score: x Explanation: xxx",
    "I cannot evaluate these responses.",
    "",
])
def test_parser_rejects_malformed_answers(text):
    assert parse_scores(text) is None


def test_prompt_is_appendix_a2_filled_once():
    prompt = judge_prompt("How do I bake bread?", "Knead [Response2]", "Buy it.")
    assert prompt.startswith("Please evaluate the quality of the response according to the given instructions.")
    assert "6. Educational and Engaging: The AI\u2019s responses should be enriched with accurate, relevant, and" in prompt
    assert "**" not in JUDGE_PROMPT and "rel-" not in JUDGE_PROMPT
    assert prompt.endswith("Instruction: How do I bake bread?\n\nResponse 1: Knead [Response2]\n\nResponse 2: Buy it.")


class CountingJudge(TextJudge):
    def __init__(self, reply, name="fake:counting"):
        self.reply, self.name, self.prompts = reply, name, []

    def answer(self, prompt):
        self.prompts.append(prompt)
        return self.reply(prompt)


ITEMS = [{"id": "win", "instruction": "q1", "a": "a good answer", "b": "a poor answer"},
         {"id": "lose", "instruction": "q2", "a": "a poor answer", "b": "a good answer"},
         {"id": "tie", "instruction": "q3", "a": "good", "b": "also good"}]


def test_position_biased_judge_gives_only_ties_and_no_consistency(tmp_path):
    judge = CountingJudge(lambda p: "Response 1 Quality Score: 8\nResponse 2 Quality Score: 5")
    result = judge_pairs(judge, ITEMS, tmp_path)
    assert [r["outcome"] for r in result["records"]] == ["tie"] * 3
    assert result["records"][0]["verdicts"] == {"a_first": "win", "b_first": "lose"}
    assert result["summary"] == {"n": 3, "judged": 3, "failures": 0, "win": 0.0, "tie": 1.0, "lose": 0.0,
                                 "consistency": 0.0, "win_minus_lose": 0.0, "win_minus_lose_ci": [0.0, 0.0]}


def test_consistent_judge_wins_loses_and_ties_in_both_orders(tmp_path):
    judge = CountingJudge(answer_by_quality)
    result = judge_pairs(judge, ITEMS, tmp_path)
    assert [r["outcome"] for r in result["records"]] == ["win", "lose", "tie"]
    assert result["summary"]["consistency"] == 1.0
    assert result["summary"]["win"] == pytest.approx(1 / 3)
    summary = result["summary"]  # outcomes +1, -1, 0: win - lose is 0, inside an interval within [-1, 1]
    assert summary["win_minus_lose"] == 0.0 and -1 <= summary["win_minus_lose_ci"][0] <= 0 <= summary["win_minus_lose_ci"][1] <= 1
    assert len(judge.prompts) == 6  # both orders of each item
    assert responses_of(judge.prompts[0]) == ("a good answer", "a poor answer")
    assert responses_of(judge.prompts[1]) == ("a poor answer", "a good answer")


def test_unparsable_answers_are_retried_then_recorded_as_failures(tmp_path):
    def reply(prompt):  # the first item's A-first order never parses
        a_first_of_q1 = "Instruction: q1\n" in prompt and responses_of(prompt)[0] == "a good answer"
        return "I refuse." if a_first_of_q1 else answer_by_quality(prompt)

    judge = CountingJudge(reply)
    result = judge_pairs(judge, ITEMS, tmp_path, attempts=3)
    failure = result["records"][0]
    assert failure["outcome"] == "failure" and failure["raw"]["a_first"] == ["I refuse."] * 3
    assert failure["scores"] == {"a_first": None, "b_first": (3.0, 9.0)}
    assert len(judge.prompts) == 3 + 1 + 2 * 2
    summary = {k: v for k, v in result["summary"].items() if k != "win_minus_lose_ci"}
    assert summary == {"n": 3, "judged": 2, "failures": 1, "win": 0.0, "tie": 0.5, "lose": 0.5, "consistency": 1.0,
                       "win_minus_lose": -0.5}  # over the judged items only: a tie and a loss


def test_cache_makes_a_rerun_free_and_identical(tmp_path):
    first = CountingJudge(answer_by_quality)
    before = judge_pairs(first, ITEMS, tmp_path / "cache")
    again = CountingJudge(answer_by_quality)
    after = judge_pairs(again, ITEMS, tmp_path / "cache")
    assert again.prompts == [] and after["summary"] == before["summary"]
    other = CountingJudge(answer_by_quality, name="fake:another-model")  # another judge is not served the cache
    judge_pairs(other, ITEMS, tmp_path / "cache")
    assert len(other.prompts) == 6


def test_reward_margin_judge_ties_within_the_margin(tmp_path):
    rewards = {"a good answer": 2.0, "a poor answer": -1.0, "good": 0.5, "also good": 0.7}
    seen = []

    def score(prompts, responses):
        seen.append(prompts)
        return [rewards[r] for r in responses]

    result = judge_pairs(RewardMarginJudge(score, "runs/x/rm", tie_margin=0.5), ITEMS, tmp_path)
    assert [r["outcome"] for r in result["records"]] == ["win", "lose", "tie"]
    assert result["summary"]["consistency"] == 1.0 and seen[0] == ["q1", "q1"]


def test_openai_judge_talks_to_a_real_endpoint_and_never_stores_the_key(endpoint, tmp_path):
    judge = OpenAIJudge()
    result = judge_pairs(judge, ITEMS, tmp_path / "cache")
    write_json(tmp_path / "results.json", result)
    assert [r["outcome"] for r in result["records"]] == ["win", "lose", "tie"]
    assert len(endpoint) == 6
    first = endpoint[0]
    assert first["path"] == "/v1/chat/completions" and first["authorization"] == f"Bearer {SECRET}"
    assert first["body"]["model"] == "judge-test-model" and first["body"]["temperature"] == 0
    assert first["body"]["messages"] == [{"role": "user", "content": judge_prompt("q1", "a good answer", "a poor answer")}]
    assert SECRET not in repr(judge) and SECRET not in str(judge) and SECRET not in judge.name
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_openai_judge_names_the_missing_variable(endpoint, monkeypatch):
    monkeypatch.delenv("MPO_JUDGE_API_KEY")
    with pytest.raises(RuntimeError, match="MPO_JUDGE_API_KEY"):
        OpenAIJudge()


def test_local_chat_judge_generates_under_the_chat_template(tmp_path):
    torch = pytest.importorskip("torch")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    words = sorted(set(JUDGE_PROMPT.split()) | {"<|user|>", "<|assistant|>", "q1", "q2", "q3", "a", "good",
                                                "poor", "answer", "also"})
    vocab = {w: i for i, w in enumerate(["<unk>", "<pad>", "<eos>", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", pad_token="<pad>",
                                        eos_token="<eos>")
    tokenizer.chat_template = ("{% for m in messages %}<|{{ m.role }}|> {{ m.content }} {% endfor %}"
                               "{% if add_generation_prompt %}<|assistant|>{% endif %}")
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(vocab), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                                         pad_token_id=1, eos_token_id=2, bos_token_id=None))
    generate, inputs = model.generate, []
    model.generate = lambda **kwargs: inputs.append(kwargs["input_ids"]) or generate(**kwargs)
    judge = LocalChatJudge(model, tokenizer, name="tiny-random", max_new_tokens=6)
    text = judge.answer(judge_prompt("q1", "a good answer", "a poor answer"))
    seen = tokenizer.decode(inputs[0][0])
    assert seen.startswith("<|user|> Please evaluate") and seen.endswith("<|assistant|>")
    assert len(text.split()) <= 6 and "Please" not in text  # only the new tokens come back
    result = judge_pairs(judge, ITEMS[:1], tmp_path)  # random weights never emit two scores
    assert judge.name == "local:tiny-random"
    assert result["summary"]["failures"] == 1 and len(result["records"][0]["raw"]["a_first"]) == 3
