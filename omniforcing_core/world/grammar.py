"""The world's prompt language: what is in a scene, never where.

    prompt  := phrase verb [tail]
    phrase  := "a" COLOUR NOUN | phrase "and" "a" COLOUR NOUN | phrase "," "a" COLOUR NOUN
    verb    := bounce(s) | fall(s) | hop(s)   (singular with one shape)
    tail    := "around" | "off the walls" | "and bounce(s)"

"a red ball and a blue triangle bounce", "a white cube, a green disc and a red wedge hop
around". Case does not matter, a full stop is ignored and a comma is a word of its own.
"""

from __future__ import annotations

import numpy as np

from .scene import COLOURS, KINDS

NOUNS = {
    "circle": "circle", "ball": "circle", "disc": "circle",
    "square": "square", "box": "square", "cube": "square",
    "triangle": "triangle", "wedge": "triangle",
}
VERBS = {"bounce": "bounces", "fall": "falls", "hop": "hops"}
TAILS = ("", "around", "off the walls", "and bounce")
FUNCTION_WORDS = ("a", "and", ",", "around", "off", "the", "walls")
# The closed vocabulary, in a fixed order: token ids of the prompt encoder.
VOCABULARY = tuple(
    list(FUNCTION_WORDS) + list(COLOURS) + list(NOUNS) + [w for pair in VERBS.items() for w in pair]
)


def words(prompt: str) -> list[str]:
    """The prompt's words; raises ValueError naming a word outside the vocabulary."""
    tokens = prompt.lower().replace(",", " , ").replace(".", " ").split()
    for token in tokens:
        if token not in VOCABULARY:
            raise ValueError(
                f"the word {token!r} is not in the world's prompt vocabulary; allowed words: "
                + " ".join(VOCABULARY)
            )
    return tokens


def parse(prompt: str) -> tuple[tuple[str, str], ...]:
    """The (colour, kind) pairs a prompt names, in order, with synonyms resolved."""
    tokens = words(prompt)
    pairs = []
    for colour, noun in zip(tokens, tokens[1:]):
        if colour in COLOURS and noun in NOUNS:
            pairs.append((colour, NOUNS[noun]))
    return tuple(pairs)


def describe(scene) -> str:
    """A prompt for a scene; the synonyms and the tail are drawn from the scene's seed."""
    rng = np.random.default_rng([scene.seed, 7])
    synonyms = {kind: [noun for noun, k in NOUNS.items() if k == kind] for kind in KINDS}
    phrases = [f"a {s.colour} {synonyms[s.kind][int(rng.integers(len(synonyms[s.kind])))]}" for s in scene.shapes]
    if len(phrases) == 1:
        subject = phrases[0]
    else:
        subject = ", ".join(phrases[:-1]) + " and " + phrases[-1]
    plural = len(phrases) > 1
    verb = scene.verb if plural else VERBS[scene.verb]
    tail = TAILS[int(rng.integers(len(TAILS)))]
    if tail == "and bounce":
        tail = "" if scene.verb == "bounce" else ("and bounce" if plural else "and bounces")
    return " ".join(part for part in (subject, verb, tail) if part)
