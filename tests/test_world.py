"""Tests of rlhf_utils.world, each against an independent reference.

References: the entropy worked out by the chain rule from the grammar's constants (not
from the module's tables), empirical averages over many samples, VADER called directly,
penalties added up by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from vaderSentiment.vaderSentiment import BOOSTER_DICT, NEGATE, SentimentIntensityAnalyzer

from rlhf_utils import world as W
from rlhf_utils.world import World

VADER = SentimentIntensityAnalyzer()


def vader(text: str) -> float:
    return VADER.polarity_scores(text)["compound"]


def H(probs) -> float:
    """Entropy in nats of a probability vector (zeros ignored)."""
    p = np.asarray([x for x in probs if x > 0], dtype=float)
    return float(-(p * np.log(p)).sum())


@pytest.fixture(scope="module")
def world() -> World:
    return World(seed=0)


@pytest.fixture(scope="module")
def many_reviews(world):
    return world.sample_reviews(20_000, seed=123)


# ---- determinism and exact log-probabilities ----------------------------------------


def test_same_seed_same_reviews_different_seed_different(world):
    a = world.sample_reviews(50, seed=1)
    b = World(seed=0).sample_reviews(50, seed=1)
    assert [r.text for r in a] == [r.text for r in b]
    assert [r.logprob for r in a] == [r.logprob for r in b]
    assert [r.text for r in world.sample_reviews(50, seed=2)] != [r.text for r in a]
    assert [r.text for r in World(seed=1).sample_reviews(50, seed=1)] != [r.text for r in a]
    assert world.corpus(20, seed=5) == World(0).corpus(20, seed=5)
    assert world.prompts(20, seed=5) == World(0).prompts(20, seed=5)
    assert world.demonstrations(20, seed=5) == World(0).demonstrations(20, seed=5)


def test_review_text_is_prompt_plus_completion(world):
    for r in world.sample_reviews(200, seed=3):
        assert r.text == r.prompt + " " + r.completion
        assert r.prompt.endswith(" .") and r.completion.endswith(" .")
        assert r.text == " ".join(r.text.split())  # single spaces, no stray whitespace
        assert r.text == r.text.lower()
        assert 1 <= len(r.sentences) <= 4
        assert r.completion.count(" .") == len(r.sentences)
        assert world.domain_of(r.prompt) == r.domain


def test_log_prob_matches_recorded_logprob(world):
    for r in world.sample_reviews(300, seed=4):
        assert world.log_prob(r.text) == pytest.approx(r.logprob, abs=1e-9)
        assert np.isfinite(r.logprob) and r.logprob < 0


@pytest.mark.parametrize("text", [
    "",
    "i loved this film .",  # no body sentence
    "i loved this film . the food was great .",  # a restaurant aspect in a film review
    "i loved this film . the acting was great",  # no final "."
    "i loved this film . the acting was great . and",  # trailing words
    "hello there . the acting was great .",  # not an opening
    "i loved this film . " + "the acting was great . " * 5,  # 5 body sentences: N is 1-4
    "i loved this film . the acting was wonderful wonderful wonderful .",
])
def test_log_prob_of_impossible_text_is_minus_inf(world, text):
    assert world.log_prob(text) == -math.inf


def test_log_prob_hand_worked(world):
    """P = P(opening) * P(N=1) * P(sentence | film, positive), each factor by hand."""
    text = "i loved this film . i would highly recommend it ."
    p_open = 0.35 / (4 * 3 * 2)  # mood, then domain, verb and noun uniform
    p_n = 0.2
    # positive polarity 0.7, template "recommend" 0.1, form "highly" 0.3, no defect 0.9
    p_sentence = 0.7 * 0.1 * 0.3 * 0.9
    assert world.log_prob(text) == pytest.approx(math.log(p_open * p_n * p_sentence), abs=1e-12)


# ---- probabilities and the exact entropy ---------------------------------------------


def test_tables_and_openings_sum_to_one(world):
    for key, (sentences, probs) in world._sentence_tables.items():
        assert len(sentences) == len(set(sentences))
        assert probs.sum() == pytest.approx(1.0, abs=1e-12), key
        assert (probs > 0).all()
    openings, p_open = world._openings
    assert p_open.sum() == pytest.approx(1.0, abs=1e-12)
    assert len({o for o, _, _ in openings}) == len(openings)  # each opening says its domain and mood


def _sentence_entropy_by_chain_rule(mood: str) -> float:
    """H(body sentence | domain, mood) from the grammar's constants alone.

    The grammar is unambiguous, so the entropy of the sentence equals the entropy of
    its derivation: polarity, then template, then the choices inside the template,
    then the (independent) defect.
    """
    n_aspects = 6
    h_intens = H(W.INTENSIFIERS.values())
    n_adj = 10
    templates = {"was": 0.55, "verb": 0.2, "overall": 0.15, "recommend": 0.1}
    h_pos_pred = h_intens + math.log(n_adj)
    h_neg_pred = H([0.8, 0.2]) + 0.8 * (h_intens + math.log(n_adj)) + 0.2 * math.log(2)
    h_given = {
        "positive": H(templates.values()) + 0.55 * (math.log(n_aspects) + h_pos_pred)
        + 0.2 * math.log(n_aspects * 3) + 0.15 * h_pos_pred + 0.1 * H([0.7, 0.3]),
        "negative": H(templates.values()) + 0.55 * (math.log(n_aspects) + h_neg_pred)
        + 0.2 * math.log(n_aspects * 2) + 0.15 * h_neg_pred + 0.0,
        "neutral": math.log(n_aspects) + math.log(6),
    }
    pol = W.POLARITY_GIVEN_MOOD[mood]
    return H(pol.values()) + sum(p * h_given[k] for k, p in pol.items()) + H(W.DEFECT_PROBS.values())


@pytest.mark.parametrize("domain,mood", [("film", "positive"), ("restaurant", "negative"), ("album", "mixed")])
def test_sentence_table_entropy_brute_force(world, domain, mood):
    """-sum p log p over the enumerated table == the chain-rule entropy of the grammar."""
    sentences, probs = world._sentence_tables[domain, mood]
    brute = -sum(p * math.log(p) for p in probs.tolist())
    assert brute == pytest.approx(_sentence_entropy_by_chain_rule(mood), abs=1e-9)


def test_entropy_closed_form(world):
    """The whole world's entropy by the chain rule: opening, then N, then N sentences."""
    h_opening = math.log(4) + H(W.MOOD_PROBS.values()) + sum(
        p * math.log(len(W.OPENING_VERBS.get(m, ("x",))) * 2) for m, p in W.MOOD_PROBS.items())
    mean_n = sum(n * p for n, p in W.N_SENTENCES.items())
    h = h_opening + H(W.N_SENTENCES.values()) + mean_n * sum(
        p * _sentence_entropy_by_chain_rule(m) for m, p in W.MOOD_PROBS.items())
    assert world.entropy()[0] == pytest.approx(h, abs=1e-9)


def test_entropy_matches_samples(world, many_reviews):
    """E[-log p(review)] and E[tokens] + 1 (EOS) from 20k samples agree with entropy()."""
    h, tokens = world.entropy()
    nll = -np.array([r.logprob for r in many_reviews])
    se = nll.std(ddof=1) / math.sqrt(len(nll))
    assert abs(nll.mean() - h) < 4 * se, (nll.mean(), h, se)
    lengths = np.array([len(r.text.split()) + 1 for r in many_reviews])
    se_len = lengths.std(ddof=1) / math.sqrt(len(lengths))
    assert abs(lengths.mean() - tokens) < 4 * se_len, (lengths.mean(), tokens, se_len)
    assert world.entropy_per_token() == pytest.approx(h / tokens)
    assert 0.5 < world.entropy_per_token() < 2.0  # a sane nats/token


def test_entropy_per_token_grows_with_defects():
    """More defects = more choices = more entropy; no defects = the least."""
    clean = World(0, {None: 1.0}).entropy_per_token()
    default = World(0).entropy_per_token()
    noisy = World(0, {None: 0.5, "repetition": 0.25, "broken": 0.25}).entropy_per_token()
    assert clean < default < noisy


# ---- the lexicon agrees with VADER ---------------------------------------------------


def test_sentiment_words_in_vader_with_right_sign():
    lexicon = VADER.lexicon
    for word in (*W.POSITIVE_ADJECTIVES, *W.POSITIVE_VERBS, "recommend"):
        assert lexicon.get(word, 0) > 0, word
    for word in (*W.NEGATIVE_ADJECTIVES, *W.NEGATIVE_VERBS):
        assert lexicon.get(word, 0) < 0, word
    for word in W.NEUTRAL_ADJECTIVES:
        assert word not in lexicon, word
    for word in W.NEGATABLE_ADJECTIVES:
        assert lexicon[word] > 0 and vader(f"the food was not {word} .") < 0


def test_intensifiers_are_vader_boosters():
    for word in W.INTENSIFIERS:
        if word:
            assert BOOSTER_DICT.get(word, 0) > 0, word
    assert BOOSTER_DICT.get("highly", 0) > 0  # "i would highly recommend it"
    assert "not" in NEGATE


def test_no_other_body_word_carries_sentiment(world):
    """VADER scores only the sentiment words in a completion (openings aside)."""
    sentiment = {*W.POSITIVE_ADJECTIVES, *W.NEGATIVE_ADJECTIVES, *W.POSITIVE_VERBS,
                 *W.NEGATIVE_VERBS, "recommend"}
    body_words = {w for s in world._kinds for w in s.split()}
    assert {w for w in body_words if w in VADER.lexicon} <= sentiment


def test_every_clean_sentence_has_vader_sign_of_its_polarity(world):
    for sentence, kind in world._kinds.items():
        if kind.defect is None:
            c = vader(sentence)
            expected = {"positive": c > 0, "negative": c < 0, "neutral": c == 0}[kind.polarity]
            assert expected, (sentence, kind.polarity, c)


# ---- analyse and the gold reward -----------------------------------------------------


def test_clean_table_sentences_are_grammatical_on_topic(world):
    prompt = {"film": "i loved this film .", "book": "i read this book .",
              "restaurant": "i hated this place .", "album": "i heard this record ."}
    clean = World(0, {None: 1.0})
    for (domain, mood), (sentences, _) in clean._sentence_tables.items():
        for s in sentences[::7]:
            assert world.is_grammatical(s, prompt[domain]), s
            assert world.is_grammatical(s)


@pytest.mark.parametrize("completion,defects", [
    ("the acting was great .", [None]),
    ("the acting was great great .", ["repetition"]),
    ("the acting was very dull dull .", ["repetition"]),
    ("i would not recommend recommend it .", ["repetition"]),
    ("the acting great .", ["broken"]),  # verb dropped
    ("i the acting loved .", ["broken"]),  # object before verb
    ("overall , it very good .", ["broken"]),
    ("i recommend would it .", ["broken"]),
    ("blah blah .", ["unparseable"]),
    ("great great great great .", ["unparseable"]),
    ("the acting was great", ["unparseable"]),  # no final "."
    ("the acting was great . and", [None, "unparseable"]),  # trailing words
    ("the acting was great great great .", ["unparseable"]),
    ("the food was great .", ["off_topic"]),  # a restaurant aspect, film prompt
    ("the acting was great . the food was bad .", [None, "off_topic"]),
])
def test_analyse_defects(world, completion, defects):
    a = world.analyse(completion, "i loved this film .")
    assert [k.defect for _, k in a.sentences] == defects
    assert a.grammatical == (all(d is None for d in defects) and bool(defects))
    assert " ".join(s for s, _ in a.sentences) == " ".join(completion.split())


def test_off_topic_needs_the_prompt(world):
    assert world.analyse("the food was great .").grammatical  # no prompt: any domain
    assert not world.analyse("the food was great .", "i loved this film .").grammatical
    assert world.analyse("the food was great .", "i tried this place .").grammatical
    # aspects shared by two domains are on topic in both
    assert world.is_grammatical("the characters were dull .", "i read this novel .")
    assert world.is_grammatical("the characters were dull .", "i watched this movie .")


def test_analyse_polarity(world):
    a = world.analyse("the acting was great . i hated the plot . the music was loud . "
                      "i would not recommend it . the ending was not good .")
    assert [k.polarity for _, k in a.sentences] == ["positive", "negative", "neutral", "negative", "negative"]


def test_gold_reward_hand_worked(world):
    film = "i loved this film ."
    c1 = "the acting was great . the plot was very good ."
    assert world.gold_reward(c1, film) == pytest.approx(vader(c1), abs=1e-12)
    c2 = "the acting was great great . the food was bad ."  # repetition 0.5 + off topic 0.5
    assert world.gold_reward(c2, film) == pytest.approx(vader(c2) - 0.5 - 0.5, abs=1e-12)
    c3 = "the acting great . i loved the plot . blah"  # broken 0.5 + unparseable 1.0
    assert world.gold_reward(c3, film) == pytest.approx(vader(c3) - 0.5 - 1.0, abs=1e-12)
    assert world.gold_reward("", film) == -1.0  # saying nothing costs as much as an unparseable sentence
    rewards = world.gold_rewards([c1, c2, c3], [film] * 3)
    np.testing.assert_allclose(rewards, [vader(c1), vader(c2) - 1.0, vader(c3) - 1.5], atol=1e-12)
    np.testing.assert_allclose(world.gold_rewards([c2]), [vader(c2) - 0.5], atol=1e-12)  # no prompt: on topic


def test_repetition_is_the_hackable_defect(world):
    """VADER likes 'great great' more than 'great'; the human (gold reward) likes it less."""
    clean, doubled = "the acting was great .", "the acting was great great ."
    assert vader(doubled) > vader(clean)
    assert world.analyse(doubled).vader == pytest.approx(vader(doubled))
    assert world.gold_reward(doubled) < world.gold_reward(clean)


def test_positive_beats_negative_in_gold_reward(world):
    assert world.gold_reward("the acting was great .") > 0 > world.gold_reward("the acting was awful .")
    assert world.gold_reward("the acting was long .") == 0.0


# ---- the grammar and its corpus ------------------------------------------------------


def test_grammar_is_unambiguous():
    kinds = World()._kinds  # raises AssertionError on an ambiguous sentence
    assert len(kinds) > 1000
    assert {k.defect for k in kinds.values()} == {None, "repetition", "broken"}


def test_demonstrations_are_defect_free(world):
    demos = world.demonstrations(500, seed=9)
    assert len(demos) == 500
    for prompt, completion in demos:
        assert world.is_grammatical(completion, prompt), (prompt, completion)
    assert any(not World(0).is_grammatical(c) for _, c in world.demonstrations(500, seed=9, clean=False))


def test_defect_frequency_matches_defect_probs(many_reviews):
    counts = {None: 0, "repetition": 0, "broken": 0}
    for r in many_reviews:
        for k in r.sentences:
            counts[k.defect] += 1
    n = sum(counts.values())
    for defect, p in W.DEFECT_PROBS.items():
        se = math.sqrt(p * (1 - p) / n)
        assert abs(counts[defect] / n - p) < 4 * se, (defect, counts[defect] / n, p)


def test_analyse_agrees_with_the_sampled_attributes(world):
    for r in world.sample_reviews(300, seed=11):
        a = world.analyse(r.completion, r.prompt)
        assert tuple(k for _, k in a.sentences) == r.sentences
        assert a.grammatical == all(k.defect is None for k in r.sentences)


def test_mood_frequency_and_sentence_count(many_reviews):
    n = len(many_reviews)
    for mood, p in W.MOOD_PROBS.items():
        f = sum(r.mood == mood for r in many_reviews) / n
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n), mood
    for k, p in W.N_SENTENCES.items():
        f = sum(len(r.sentences) == k for r in many_reviews) / n
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n), k


def test_prompts_are_openings(world):
    openings = {o for o, _, _ in world._openings[0]}
    prompts = world.prompts(300, seed=2)
    assert set(prompts) <= openings and len(set(prompts)) > 20


def test_vocabulary_covers_the_corpus(world, many_reviews):
    vocab = set(world.vocabulary())
    assert world.vocabulary() == sorted(vocab)
    assert {w for r in many_reviews[:2000] for w in r.text.split()} <= vocab


# ---- bad input -----------------------------------------------------------------------


@pytest.mark.parametrize("probs", [{None: 0.9, "repetition": 0.05}, {None: 1.0, "broken": 0.1}])
def test_defect_probs_must_sum_to_one(probs):
    with pytest.raises(ValueError, match="sum to 1"):
        World(0, probs)
