"""Turn a conversation into prompt tokens with the model's own chat template.

The template is the Jinja text stored in the GGUF (`tokenizer.chat_template`), rendered the way
Hugging Face and llama-cpp-python render it (llama-cpp-python's Jinja2ChatFormatter, with
add_generation_prompt so the prompt ends where the assistant's answer starts). Such a template
writes the special tokens itself, so its text is tokenized without adding BOS again.

A model without a template (a base model, a bare conversion) gets a plain "role: text" layout and
one warning: it works, but the model was never taught where an answer ends.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import jinja2
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from clm_local.errors import ClmError
from clm_local.runtime.model import ClmModel

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": "..."}

PLAIN_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}\n\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


@dataclass
class ChatTemplate:
    """A model's chat template, ready to render conversations into its prompt tokens."""

    model: ClmModel
    source: str
    writes_special_tokens: bool  # the model's own template writes BOS and friends itself

    @classmethod
    def for_model(cls, model: ClmModel) -> ChatTemplate:
        source = model.chat_template()
        if source is None:
            warnings.warn(
                f"{model.info.path} has no chat template: using a plain 'role: text' layout",
                stacklevel=2,
            )
            return cls(model, PLAIN_TEMPLATE, writes_special_tokens=False)
        return cls(model, source, writes_special_tokens=True)

    def __post_init__(self) -> None:
        try:
            self._formatter = Jinja2ChatFormatter(
                self.source,
                eos_token=self.model.special_token("eos"),
                bos_token=self.model.special_token("bos"),
                add_generation_prompt=True,
            )
        except jinja2.TemplateError as error:
            raise ClmError(f"{self.model.info.path}: the chat template does not parse ({error})") from None

    def render(self, messages: list[Message]) -> str:
        """The prompt text of a conversation, ending where the assistant's next answer starts."""
        try:
            return self._formatter(messages=messages).prompt
        except (jinja2.TemplateError, ValueError) as error:  # ValueError: the template's raise_exception
            raise ClmError(f"the chat template refused the conversation: {error}") from None

    def tokens(self, messages: list[Message]) -> list[int]:
        return self.model.tokenize(
            self.render(messages), add_special=not self.writes_special_tokens, parse_special=True
        )
