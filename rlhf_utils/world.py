"""The synthetic review world: a grammar of short reviews whose "human" is known.

Nothing can be downloaded here, and RLHF is easiest to understand when the preference
being learned is known exactly. So the course's default task is a small world that this
module generates deterministically -- the positive-sentiment task of Ziegler et al.
(2019, "Fine-Tuning Language Models from Human Preferences"), TRL's gpt2-sentiment
example and the DPO paper's IMDb experiment (Rafailov et al. 2023), made small:

* a **review** is an opening sentence (the **prompt**) and 1-4 body sentences (the
  **completion**), about a film, a book, a restaurant or an album::

      i hated this book . the characters were very dull . i would not recommend it .

* latent attributes per review (domain, mood, shown by the opening) and per sentence
  (polarity: positive / negative / neutral; defect: none, ``repetition`` -- the
  sentiment word doubled, "great great" -- or ``broken`` grammar -- a missing verb or
  words out of order);
* the **gold preference** ("the human"): VADER's compound sentiment score of the
  completion (Hutto & Gilbert 2014, an independent lexicon-and-rule scorer, shipped by
  the ``vaderSentiment`` package) minus penalties for defects and for text the grammar
  cannot produce. VADER *rewards* a doubled "great great", so a reward model that
  misses the repetition penalty can be hacked -- and, because the gold score is known,
  that hacking can be measured (notebook 07).

Body sentences are drawn independently given (domain, mood) from a finite table that
this module enumerates, so the probability of every review -- and the exact entropy
of the world per token, the best cross-entropy any language model can reach -- is
computed exactly rather than estimated (:meth:`World.entropy_per_token`).

Text format: lower-case words and punctuation separated by single spaces; one word =
one token of the course's word-level tokenizer.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from rlhf_utils.checks import check_int, check_number, check_texts

# --------------------------------------------------------------------------------------
# The lexicon. Every sentiment word is one VADER knows, with the sign we give it
# (checked by tests/test_world.py); neutral adjectives are ones VADER scores 0.
# --------------------------------------------------------------------------------------

DOMAINS: dict[str, dict] = {
    "film": {
        "nouns": ("film", "movie"),
        "consume": "watched",
        "aspects": {"acting": "sg", "plot": "sg", "ending": "sg", "music": "sg",
                    "characters": "pl", "effects": "pl"},
    },
    "book": {
        "nouns": ("book", "novel"),
        "consume": "read",
        "aspects": {"story": "sg", "writing": "sg", "ending": "sg", "prose": "sg",
                    "characters": "pl", "chapters": "pl"},
    },
    "restaurant": {
        "nouns": ("restaurant", "place"),
        "consume": "tried",
        "aspects": {"food": "sg", "service": "sg", "pasta": "sg", "dessert": "sg",
                    "staff": "pl", "portions": "pl"},
    },
    "album": {
        "nouns": ("album", "record"),
        "consume": "heard",
        "aspects": {"vocals": "pl", "lyrics": "pl", "production": "sg", "sound": "sg",
                    "songs": "pl", "melodies": "pl"},
    },
}

POSITIVE_ADJECTIVES = ("great", "good", "excellent", "wonderful", "amazing", "brilliant",
                       "lovely", "superb", "fantastic", "delightful")
NEGATIVE_ADJECTIVES = ("bad", "awful", "terrible", "boring", "dull", "horrible", "poor",
                       "disappointing", "weak", "annoying")
NEGATABLE_ADJECTIVES = ("good", "great")  # "not good" is negative to VADER and to us
NEUTRAL_ADJECTIVES = ("long", "short", "simple", "quiet", "loud", "predictable")
INTENSIFIERS = {"": 0.55, "very": 0.2, "really": 0.15, "quite": 0.1}  # VADER boosters
POSITIVE_VERBS = ("loved", "liked", "enjoyed")
NEGATIVE_VERBS = ("hated", "disliked")

MOODS = ("positive", "negative", "mixed")
MOOD_PROBS = {"positive": 0.35, "negative": 0.35, "mixed": 0.3}
OPENING_VERBS = {"positive": ("loved", "enjoyed", "liked"), "negative": ("hated", "disliked")}
POLARITIES = ("positive", "negative", "neutral")
POLARITY_GIVEN_MOOD = {
    "positive": {"positive": 0.7, "negative": 0.1, "neutral": 0.2},
    "negative": {"positive": 0.1, "negative": 0.7, "neutral": 0.2},
    "mixed": {"positive": 0.35, "negative": 0.35, "neutral": 0.3},
}
# P(review has n body sentences)
N_SENTENCES = {1: 0.2, 2: 0.35, 3: 0.3, 4: 0.15}
# P(defect) for each body sentence of the world's own reviews
DEFECT_PROBS = {None: 0.9, "repetition": 0.05, "broken": 0.05}

# The gold preference: VADER compound minus these penalties (per sentence).
DEFECT_PENALTY = {"repetition": 0.5, "broken": 0.5, "unparseable": 1.0, "off_topic": 0.5}

EOS_TEXT = ""  # reviews end where the text ends; the tokenizer adds the EOS token


# --------------------------------------------------------------------------------------
# Data records
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SentenceKind:
    """What the grammar knows about one body sentence (same for every derivation)."""

    polarity: str | None  # positive / negative / neutral, None if unparseable
    defect: str | None  # None, "repetition", "broken", "unparseable", "off_topic"
    template: str | None  # which sentence template produced it
    domains: frozenset  # domains whose reviews can contain it


@dataclass(frozen=True)
class Review:
    """One review sampled from the world, with its latent attributes."""

    prompt: str  # the opening sentence
    completion: str  # the body sentences
    domain: str
    mood: str
    sentences: tuple[SentenceKind, ...]
    logprob: float  # exact log-probability of the review's text under the world

    @property
    def text(self) -> str:
        return f"{self.prompt} {self.completion}"


@dataclass(frozen=True)
class Analysis:
    """A completion parsed by the world's grammar."""

    sentences: tuple[tuple[str, SentenceKind], ...]  # (sentence text, what it is)
    vader: float  # VADER compound score of the whole completion

    @property
    def defects(self) -> dict[str, int]:
        counts = {d: 0 for d in DEFECT_PENALTY}
        for _, kind in self.sentences:
            if kind.defect is not None:
                counts[kind.defect] += 1
        return counts

    @property
    def grammatical(self) -> bool:
        """At least one sentence, and every sentence one the clean grammar produces."""
        return bool(self.sentences) and all(k.defect is None for _, k in self.sentences)

    @property
    def gold_reward(self) -> float:
        """VADER compound minus the defect penalties; an empty completion counts as
        one unparseable sentence (saying nothing is not a way to avoid a bad score)."""
        if not self.sentences:
            return -DEFECT_PENALTY["unparseable"]
        penalty = sum(DEFECT_PENALTY[d] * n for d, n in self.defects.items())
        return self.vader - penalty


UNPARSEABLE = SentenceKind(polarity=None, defect="unparseable", template=None, domains=frozenset())


# --------------------------------------------------------------------------------------
# The grammar, enumerated
# --------------------------------------------------------------------------------------


def _predicates(polarity: str) -> list[tuple[tuple[str, ...], str, float]]:
    """(words before the sentiment word, sentiment word, probability) for a predicate."""
    if polarity == "neutral":
        return [((), adj, 1 / len(NEUTRAL_ADJECTIVES)) for adj in NEUTRAL_ADJECTIVES]
    adjectives = POSITIVE_ADJECTIVES if polarity == "positive" else NEGATIVE_ADJECTIVES
    share = 1.0 if polarity == "positive" else 0.8
    out = [(tuple(w for w in [intens] if w), adj, share * p / len(adjectives))
           for intens, p in INTENSIFIERS.items() for adj in adjectives]
    if polarity == "negative":
        out += [(("not",), adj, 0.2 / len(NEGATABLE_ADJECTIVES)) for adj in NEGATABLE_ADJECTIVES]
    return out


def _clean_sentences(domain: str, polarity: str):
    """Yield (template, words before the repeatable word, the word, words after, prob).

    The "repeatable word" is the sentiment word (doubled by the repetition defect);
    each template also has one fixed broken form (see :func:`_realise`).
    """
    aspects = DOMAINS[domain]["aspects"]
    templates = {"was": 0.55, "verb": 0.2, "overall": 0.15, "recommend": 0.1}
    if polarity == "neutral":
        templates = {"was": 1.0}
    for template, p_template in templates.items():
        if template == "was":
            for (aspect, number), (pre, word, p) in itertools.product(aspects.items(), _predicates(polarity)):
                be = "was" if number == "sg" else "were"
                yield template, ("the", aspect, be, *pre), word, (".",), p_template * p / len(aspects)
        elif template == "verb":
            verbs = POSITIVE_VERBS if polarity == "positive" else NEGATIVE_VERBS
            for aspect, verb in itertools.product(aspects, verbs):
                yield template, ("i",), verb, ("the", aspect, "."), p_template / (len(aspects) * len(verbs))
        elif template == "overall":
            for pre, word, p in _predicates(polarity):
                yield template, ("overall", ",", "it", "was", *pre), word, (".",), p_template * p
        else:  # recommend
            forms = [(("i", "would"), ("it", "."), 0.7), (("i", "would", "highly"), ("it", "."), 0.3)]
            if polarity == "negative":
                forms = [(("i", "would", "not"), ("it", "."), 1.0)]
            for pre, post, p in forms:
                yield template, pre, "recommend", post, p_template * p


def _realise(template: str, pre: tuple, word: str, post: tuple, defect: str | None) -> str:
    """The sentence's words, with the defect applied."""
    if defect == "repetition":
        return " ".join((*pre, word, word, *post))
    if defect == "broken":
        if template == "was":  # the verb is dropped: "the food great ."
            return " ".join((*pre[:2], *pre[3:], word, *post))
        if template == "verb":  # object before the verb: "i the food loved ."
            return " ".join((*pre, *post[:-1], word, post[-1]))
        if template == "overall":  # "overall , it very good ."
            return " ".join((*pre[:3], *pre[4:], word, *post))
        return " ".join((pre[0], word, *pre[1:], *post))  # "i recommend would it ."
    return " ".join((*pre, word, *post))


def _check_text(name: str, value) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__} {value!r:.60}"
                        + (": for a list of texts use gold_rewards" if isinstance(value, (list, tuple)) else ""))
    return value


class World:
    """The review world. Deterministic: the same seed gives the same samples."""

    def __init__(self, seed: int = 0, defect_probs: dict | None = None):
        self.seed = check_int("World seed", seed, 0, "the world's seed is a whole number >= 0, e.g. World(0)")
        example = "e.g. {None: 0.9, 'repetition': 0.05, 'broken': 0.05}"
        if defect_probs is not None and not isinstance(defect_probs, dict):
            raise TypeError(f"defect_probs must be a dict of defect -> probability, {example}")
        self.defect_probs = dict(DEFECT_PROBS if defect_probs is None else defect_probs)
        for defect, prob in self.defect_probs.items():
            if defect not in DEFECT_PROBS:
                raise ValueError(f"defect_probs: unknown defect {defect!r}: the world's defects are "
                                 f"{list(DEFECT_PROBS)} (None = a clean sentence)")
            check_number(f"defect_probs[{defect!r}]", prob, 0, 1, fix=example)
        if not math.isclose(sum(self.defect_probs.values()), 1.0):
            raise ValueError(f"defect_probs must sum to 1, {example}")

    # ---- the enumerated tables ------------------------------------------------------

    @cached_property
    def _sentence_tables(self) -> dict[tuple[str, str], tuple[list[str], np.ndarray]]:
        """(domain, mood) -> (distinct body sentences, their probabilities)."""
        tables = {}
        for domain, mood in itertools.product(DOMAINS, MOODS):
            probs: dict[str, float] = {}
            for polarity, p_pol in POLARITY_GIVEN_MOOD[mood].items():
                for template, pre, word, post, p in _clean_sentences(domain, polarity):
                    for defect, p_def in self.defect_probs.items():
                        if p_def > 0:
                            s = _realise(template, pre, word, post, defect)
                            probs[s] = probs.get(s, 0.0) + p_pol * p * p_def
            sentences = sorted(probs)
            tables[domain, mood] = (sentences, np.array([probs[s] for s in sentences]))
        return tables

    @cached_property
    def _kinds(self) -> dict[str, SentenceKind]:
        """Every sentence the grammar (with any defect) can produce -> what it is."""
        found: dict[str, dict] = {}
        for domain in DOMAINS:
            for polarity in POLARITIES:
                for template, pre, word, post, _ in _clean_sentences(domain, polarity):
                    for defect in (None, "repetition", "broken"):
                        s = _realise(template, pre, word, post, defect)
                        entry = found.setdefault(s, {"kinds": set(), "domains": set()})
                        entry["kinds"].add((polarity, defect, template))
                        entry["domains"].add(domain)
        kinds = {}
        for s, entry in found.items():
            if len(entry["kinds"]) != 1:  # the grammar must be unambiguous
                raise AssertionError(f"ambiguous sentence {s!r}: {entry['kinds']}")
            (polarity, defect, template), = entry["kinds"]
            kinds[s] = SentenceKind(polarity, defect, template, frozenset(entry["domains"]))
        return kinds

    @cached_property
    def _openings(self) -> tuple[list[tuple[str, str, str]], np.ndarray]:
        """(opening text, domain, mood) and probabilities."""
        out, probs = [], []
        for domain, spec in DOMAINS.items():
            for mood, p_mood in MOOD_PROBS.items():
                verbs = OPENING_VERBS.get(mood, (spec["consume"],))
                for verb, noun in itertools.product(verbs, spec["nouns"]):
                    out.append((f"i {verb} this {noun} .", domain, mood))
                    probs.append(p_mood / (len(DOMAINS) * len(verbs) * len(spec["nouns"])))
        return out, np.array(probs)

    # ---- sampling -------------------------------------------------------------------

    def _rng(self, seed: int | None) -> np.random.Generator:
        return np.random.default_rng([self.seed, 0 if seed is None else check_int("seed", seed, 0)])

    def sample_reviews(self, n: int, seed: int | None = None) -> list[Review]:
        """``n`` reviews drawn from the world (deterministic given the seed)."""
        n = check_int("n", n, 0, "the number of reviews, e.g. 1000")
        rng = self._rng(seed)
        openings, p_open = self._openings
        n_values = np.array(list(N_SENTENCES))
        p_n = np.array(list(N_SENTENCES.values()))
        which = rng.choice(len(openings), size=n, p=p_open)
        lengths = rng.choice(n_values, size=n, p=p_n)
        reviews = []
        for i, k in zip(which, lengths):
            prompt, domain, mood = openings[i]
            sentences, probs = self._sentence_tables[domain, mood]
            picks = rng.choice(len(sentences), size=k, p=probs)
            logprob = (math.log(p_open[i]) + math.log(N_SENTENCES[int(k)])
                       + float(np.log(probs[picks]).sum()))
            body = [sentences[j] for j in picks]
            reviews.append(Review(prompt, " ".join(body), domain, mood,
                                  tuple(self._kinds[s] for s in body), logprob))
        return reviews

    def corpus(self, n: int, seed: int | None = None) -> list[str]:
        """``n`` full review texts (prompt + completion)."""
        return [r.text for r in self.sample_reviews(n, seed)]

    def prompts(self, n: int, seed: int | None = None) -> list[str]:
        """``n`` review openings, drawn as the world draws them."""
        openings, p_open = self._openings
        n = check_int("n", n, 0, "the number of prompts, e.g. 2000")
        return [openings[i][0] for i in self._rng(seed).choice(len(openings), size=n, p=p_open)]

    def demonstrations(self, n: int, seed: int | None = None, clean: bool = True) -> list[tuple[str, str]]:
        """``n`` (prompt, completion) pairs: reviews a careful writer would give.

        With ``clean`` (the default) the demonstrator makes no defects: supervised
        fine-tuning on these teaches the format without the world's typos.
        """
        world = World(self.seed, {None: 1.0}) if clean else self
        return [(r.prompt, r.completion) for r in world.sample_reviews(n, seed)]

    # ---- the gold preference --------------------------------------------------------

    @cached_property
    def _vader(self):
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

        return SentimentIntensityAnalyzer()

    def domain_of(self, prompt: str) -> str | None:
        """The domain an opening sentence is about (None if it is not one of ours)."""
        _check_text("prompt", prompt)
        return next((d for text, d, _ in self._openings[0] if text == prompt.strip()), None)

    def analyse(self, completion: str, prompt: str | None = None) -> Analysis:
        """Split a completion into sentences and say what each one is.

        A sentence ends with ".". Text the grammar cannot produce (including words
        after the last ".") is ``unparseable``; given the prompt, a sentence about
        another domain's aspects is ``off_topic``.
        """
        words = _check_text("completion", completion).split()
        domain = self.domain_of(prompt) if prompt is not None else None
        parsed, current = [], []
        for w in words:
            current.append(w)
            if w == ".":
                parsed.append(" ".join(current))
                current = []
        if current:
            parsed.append(" ".join(current))
        out = []
        for s in parsed:
            kind = self._kinds.get(s, UNPARSEABLE)
            if domain is not None and kind.defect is None and domain not in kind.domains:
                kind = SentenceKind(kind.polarity, "off_topic", kind.template, kind.domains)
            out.append((s, kind))
        vader = self._vader.polarity_scores(completion)["compound"] if words else 0.0
        return Analysis(tuple(out), vader)

    def gold_reward(self, completion: str, prompt: str | None = None) -> float:
        """The human's score of a completion: VADER compound minus defect penalties."""
        return self.analyse(completion, prompt).gold_reward

    def gold_rewards(self, completions: list[str], prompts: list[str] | None = None) -> np.ndarray:
        """:meth:`gold_reward` of each completion (given its prompt, if ``prompts`` are passed)."""
        completions = check_texts("completions", completions, "completions", allow_empty=True)
        if prompts is None:
            prompts = [None] * len(completions)
        elif len(prompts := check_texts("prompts", prompts, "prompts", allow_empty=True)) != len(completions):
            raise ValueError(f"gold_rewards: {len(completions)} completions but {len(prompts)} prompts: pass one "
                             "prompt per completion, or prompts=None")
        return np.array([self.gold_reward(c, p) for c, p in zip(completions, prompts)])

    def is_grammatical(self, completion: str, prompt: str | None = None) -> bool:
        return self.analyse(completion, prompt).grammatical

    # ---- exact information content ----------------------------------------------------

    def log_prob(self, text: str) -> float:
        """Exact log-probability of a full review text (``-inf`` if the world can't make it)."""
        words = _check_text("text", text).split()
        if "." not in words:
            return -math.inf
        cut = words.index(".") + 1
        prompt, body = " ".join(words[:cut]), " ".join(words[cut:])
        openings, p_open = self._openings
        match = [(i, d, m) for i, (o, d, m) in enumerate(openings) if o == prompt]
        if not match:
            return -math.inf
        i, domain, mood = match[0]
        sentences = [s for s, _ in self.analyse(body).sentences]
        if len(sentences) not in N_SENTENCES:
            return -math.inf
        table = dict(zip(*self._sentence_tables[domain, mood]))
        if any(s not in table for s in sentences):
            return -math.inf
        return (math.log(p_open[i]) + math.log(N_SENTENCES[len(sentences)])
                + sum(math.log(table[s]) for s in sentences))

    def entropy(self) -> tuple[float, float]:
        """(entropy of a review in nats, expected number of tokens of a review).

        The token count includes the end-of-sequence token that the language model
        must also predict (but not the begin-of-sequence token it is given).
        Exact: each body sentence is drawn independently from a finite table.
        """
        openings, p_open = self._openings
        mean_n = sum(n * p for n, p in N_SENTENCES.items())
        h = -float(np.sum(p_open * np.log(p_open)))
        h += -sum(p * math.log(p) for p in N_SENTENCES.values())
        tokens = 1.0  # EOS
        for (text, domain, mood), p in zip(openings, p_open):
            sentences, probs = self._sentence_tables[domain, mood]
            lengths = np.array([len(s.split()) for s in sentences])
            h += p * mean_n * -float(np.sum(probs * np.log(probs)))
            tokens += p * (len(text.split()) + mean_n * float(np.sum(probs * lengths)))
        return h, tokens

    def entropy_per_token(self) -> float:
        """The world's entropy rate in nats per token: no model can beat it on average."""
        h, tokens = self.entropy()
        return h / tokens

    def vocabulary(self) -> list[str]:
        """Every word the world can write, sorted."""
        words = {w for s in self._kinds for w in s.split()}
        words |= {w for o, _, _ in self._openings[0] for w in o.split()}
        return sorted(words)
