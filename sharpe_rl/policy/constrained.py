"""Constrained JSON decoding for the transformers backend: every completion is one spec object.

With the processor on, a completion can only be

    {"name": "<string>", "features": "<string>", "model": "<string>"}</s>

in exactly that layout (the one the prompts show and the tiny policy's corpus uses), where each
string is any valid JSON string content with at least one non-blank character and no more
characters than ExperimentSpec allows (it strips whitespace and rejects empty or overlong
fields). Nothing may follow the closing brace but EOS. So every completion is a valid
ExperimentSpec: no json_parse and no schema failures.

How: a character-level automaton for that layout (literal skeleton, JSON string bodies with
escapes and \\uXXXX) is lifted to the tokenizer's vocabulary once, when the automaton is built:
every token's decoded text is run through it from every state, giving `next_state[state, token]`
(-1 where the token breaks the layout) and `field_chars[state, token]`, the characters it adds to
each field (counted from the first non-blank one, in raw JSON, which is never shorter than the
decoded text). A Bellman-Ford pass then gives `distance[state]`, the fewest tokens that still
reach EOS. At each step a token is allowed only if it keeps the layout, keeps every field within
its limit, and leaves enough tokens to finish, so even an untrained model closes its strings
and the object before `max_new_tokens`. (A field at its limit can always close: `"` adds nothing.)

Log-probs under this processor are those of the masked, renormalised distribution the tokens
were drawn from, not the model's own: PPO on such samples is off-policy (see generation.py).
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor, PreTrainedTokenizerBase

from sharpe_rl.spec import MAX_NAME_CHARS, MAX_SOURCE_CHARS

_LITERALS = ('{"name": "', '", "features": "', '", "model": "', '"}')
_N_FIELDS = len(_LITERALS) - 1
_FIELD_LIMITS = (MAX_NAME_CHARS, MAX_SOURCE_CHARS, MAX_SOURCE_CHARS)  # name, features, model
_ESCAPES = frozenset('"\\/bfnrt')
_HEX = frozenset("0123456789abcdefABCDEF")
# A string body's mode: plain characters, just after a backslash, or inside \uXXXX with n digits to go.
_PLAIN, _ESCAPE = "plain", "escape"
_UNICODE = ("u4", "u3", "u2", "u1")
_UNREACHABLE = 1 << 30

# A state is ("literal", k, i): the next character must be _LITERALS[k][i];
# ("string", field, has_content, mode): inside the string of field `field`;
# ("done",): the object is closed, only EOS may follow; ("end",): EOS was sampled.
State = tuple


def _states() -> list[State]:
    states: list[State] = [("literal", k, i) for k, text in enumerate(_LITERALS) for i in range(len(text))]
    for field in range(_N_FIELDS):
        for has_content in (False, True):
            for mode in (_PLAIN, _ESCAPE, *_UNICODE):
                states.append(("string", field, has_content, mode))
    return [*states, ("done",), ("end",)]


def _step(state: State, char: str) -> State | None:
    """The state after reading `char`, or None if the layout does not allow it."""
    if state[0] == "literal":
        _, k, i = state
        if char != _LITERALS[k][i]:
            return None
        if i + 1 < len(_LITERALS[k]):
            return ("literal", k, i + 1)
        return ("string", k, False, _PLAIN) if k < _N_FIELDS else ("done",)
    if state[0] != "string":
        return None  # after the closing brace only EOS (a token, not text) may come
    _, field, has_content, mode = state
    if mode == _PLAIN:
        if char == '"':
            # The quote closes the string and is the first character of the next literal.
            return ("literal", field + 1, 1) if has_content else None
        if char == "\\":
            return ("string", field, has_content, _ESCAPE)
        if ord(char) < 0x20:
            return None  # JSON forbids raw control characters inside strings
        return ("string", field, has_content or not char.isspace(), _PLAIN)
    if mode == _ESCAPE:
        if char == "u":
            return ("string", field, has_content, _UNICODE[0])
        return ("string", field, has_content, _PLAIN) if char in _ESCAPES else None
    if char not in _HEX:
        return None
    position = _UNICODE.index(mode)
    return ("string", field, has_content, _UNICODE[position + 1] if position + 1 < len(_UNICODE) else _PLAIN)


def token_texts(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> list[str | None]:
    """Each token id's text as it appears inside a decoded sequence; None for special and unused ids.

    Decoding a token after an anchor token keeps the leading space that sentencepiece tokenizers
    drop at the start of a sequence.
    """
    anchor = tokenizer.convert_tokens_to_ids(tokenizer.tokenize("a"))[-1]
    anchor_text = tokenizer.decode([anchor], clean_up_tokenization_spaces=False)
    pairs = tokenizer.batch_decode(
        [[anchor, token] for token in range(len(tokenizer))], clean_up_tokenization_spaces=False
    )
    special = set(tokenizer.all_special_ids)
    texts: list[str | None] = [None] * vocab_size
    for token, text in enumerate(pairs[:vocab_size]):
        if token not in special and text.startswith(anchor_text) and len(text) > len(anchor_text):
            texts[token] = text[len(anchor_text) :]
    return texts


class SpecJsonAutomaton:
    """The spec layout lifted to one tokenizer: `next_state`, `field_chars` and `distance`."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> None:
        if tokenizer.eos_token_id is None:
            raise ValueError("constrained decoding needs a tokenizer with an EOS token")
        states = _states()
        index = {state: i for i, state in enumerate(states)}
        self.start = index[("literal", 0, 0)]
        self.end = index[("end",)]
        done = index[("done",)]

        next_state = np.full((len(states), vocab_size), -1, dtype=np.int64)
        field_chars = np.zeros((len(states), vocab_size, _N_FIELDS), dtype=np.int32)
        char_steps: dict[tuple[State, str], State | None] = {}
        for token, text in enumerate(token_texts(tokenizer, vocab_size)):
            if text is None:
                continue
            for state in states:
                current: State | None = state
                added = [0] * _N_FIELDS
                for char in text:
                    key = (current, char)
                    if key not in char_steps:
                        char_steps[key] = _step(current, char)
                    current = char_steps[key]
                    if current is None:
                        break
                    if current[0] == "string" and current[2]:  # a character of a field with content
                        added[current[1]] += 1
                if current is not None:
                    next_state[index[state], token] = index[current]
                    field_chars[index[state], token] = added
        next_state[done, tokenizer.eos_token_id] = self.end
        next_state[self.end, :] = self.end  # rows that already ended: anything goes, it is ignored
        self.next_state = torch.from_numpy(next_state)
        self.field_chars = torch.from_numpy(field_chars)
        self.field_limits = torch.tensor(_FIELD_LIMITS, dtype=torch.int32)
        self.distance = self._distances()

    def _distances(self) -> torch.Tensor:
        """Fewest tokens from each state to `end` (Bellman-Ford over the token graph)."""
        distance = torch.full((self.next_state.shape[0],), _UNREACHABLE, dtype=torch.long)
        distance[self.end] = 0
        allowed = self.next_state >= 0
        while True:
            via = torch.where(allowed, distance[self.next_state.clamp(min=0)], _UNREACHABLE).min(dim=1).values
            updated = torch.minimum(distance, via + 1)
            updated[self.end] = 0
            if torch.equal(updated, distance):
                return distance
            distance = updated


class SpecJsonLogitsProcessor(LogitsProcessor):
    """Masks every token that would break the spec layout or leave too few tokens to finish it.

    One instance serves one generation call: it learns the prompt length on its first call and
    then follows each row's state from the tokens appended since.
    """

    def __init__(self, automaton: SpecJsonAutomaton, max_new_tokens: int) -> None:
        shortest = int(automaton.distance[automaton.start])
        if shortest > max_new_tokens:
            raise ValueError(f"max_new_tokens={max_new_tokens} is too few: the shortest valid spec needs {shortest}")
        self.start = automaton.start
        self.next_state = automaton.next_state
        self.field_chars = automaton.field_chars
        self.field_limits = automaton.field_limits
        self.distance = automaton.distance
        self.max_new_tokens = max_new_tokens
        self._prompt_length = 0
        self._states: torch.Tensor | None = None
        self._field_lengths: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        if self._states is None:  # first step: the tables move to the logits' device once
            device = scores.device
            self.next_state, self.field_chars = self.next_state.to(device), self.field_chars.to(device)
            self.field_limits, self.distance = self.field_limits.to(device), self.distance.to(device)
            self._prompt_length = input_ids.shape[1]
            self._states = torch.full((input_ids.shape[0],), self.start, device=device)
            self._field_lengths = torch.zeros((input_ids.shape[0], _N_FIELDS), dtype=torch.int32, device=device)
        else:
            last = input_ids[:, -1]
            self._field_lengths += self.field_chars[self._states, last]
            self._states = self.next_state[self._states, last]
        remaining = self.max_new_tokens - (input_ids.shape[1] - self._prompt_length)
        candidates = self.next_state[self._states]  # [batch, vocab]
        reachable = self.distance[candidates.clamp(min=0)] <= remaining - 1
        lengths_after = self._field_lengths[:, None, :] + self.field_chars[self._states]  # [batch, vocab, field]
        fits = (lengths_after <= self.field_limits).all(dim=-1)
        return scores.masked_fill(~((candidates >= 0) & reachable & fits), float("-inf"))
