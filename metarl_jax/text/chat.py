"""The chat format: observations as user turns and actions as assistant turns, via the tokenizer's template.

A chat template is turn-periodic for the conversations a trial makes (user, assistant, user, ...), so it
reduces to three fixed token sequences, found once on the host by rendering marker conversations:

* ``open``: before each observation (e.g. ``<|im_start|>user\\n``);
* ``close``: after each observation, up to where the assistant starts writing
  (``<|im_end|>\\n<|im_start|>assistant\\n``);
* ``end``: after each action (``<|im_end|>\\n``).

The rollout prefills them with the observations, so the chat format costs no decode calls.
:func:`chat_wrap` checks that the template really is periodic on a three-turn conversation and refuses it
otherwise.
"""

from __future__ import annotations

import dataclasses

_USER, _ASSISTANT = "\u2460USER\u2460", "\u2461ASSISTANT\u2461"


@dataclasses.dataclass(frozen=True)
class ChatWrap:
    """Token ids put around each turn (see the module docstring). Empty tuples mean plain text."""

    open: tuple = ()
    close: tuple = ()
    end: tuple = ()

    @property
    def per_turn(self) -> int:
        """Extra tokens a turn costs."""
        return len(self.open) + len(self.close) + len(self.end)


def chat_wrap(tokenizer) -> ChatWrap:
    """The :class:`ChatWrap` of a Hugging Face tokenizer's chat template (:class:`~metarl_jax.text.HFTokenizer`)."""
    hf = getattr(tokenizer, "hf", None)
    if hf is None or not getattr(hf, "chat_template", None):
        raise ValueError(f"{tokenizer!r} has no chat template; use a local Hugging Face tokenizer directory with one "
                         "(tokenizer_config.json 'chat_template'), or turn the chat format off")

    def render(messages, prompt):
        return hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt)

    one = render([{"role": "user", "content": _USER}], True)
    if one.count(_USER) != 1:
        raise ValueError("the chat template does not show the user message verbatim")
    open_text, close_text = one.split(_USER)
    two = render([{"role": "user", "content": _USER}, {"role": "assistant", "content": _ASSISTANT}], False)
    if not two.startswith(one) or two.count(_ASSISTANT) != 1:
        raise ValueError("the chat template is not turn-periodic (the assistant turn does not follow the "
                         "generation prompt); the chat format cannot be used with it")
    end_text = two.split(_ASSISTANT)[1]
    three = render([{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                    {"role": "user", "content": "c"}], True)
    if three != open_text + "a" + close_text + "b" + end_text + open_text + "c" + close_text:
        raise ValueError("the chat template is not turn-periodic over user/assistant turns; the chat format "
                         "cannot be used with it")
    pieces = [tokenizer.encode(t) for t in (open_text, close_text, end_text)]
    for text, ids in zip((open_text, close_text, end_text), pieces):
        if tokenizer.decode(ids) != text:
            raise ValueError(f"{tokenizer!r} cannot render the chat template's {text!r} exactly")
    return ChatWrap(*(tuple(int(i) for i in p) for p in pieces))
