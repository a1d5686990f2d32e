"""Chat prompt rendering: the file's template in jinja2's sandbox, the default, and turn-end stops."""
import pytest

import mole
from mole.chat import render_chat


class FakeModel:
    def __init__(self, template=None):
        self.metadata = {"tokenizer.ggml.tokens": ["<|endoftext|>", "a"], "tokenizer.ggml.bos_token_id": 0,
                         "tokenizer.ggml.eos_token_id": 0}
        if template:
            self.metadata["tokenizer.chat_template"] = template


MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
TRANSCRIPT = ("{% for message in messages %}{{ message['role'] | capitalize }}: {{ message['content'] }}\n\n"
              "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
CHATML = ("{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def test_default_template_and_stops():
    text, stops = render_chat(MSGS, None, FakeModel())
    assert text == "Be brief.\n\nUser: Hi\nAssistant:"
    assert "\nUser:" in stops


def test_file_template_gets_next_turn_stop():
    text, stops = render_chat(MSGS, TRANSCRIPT, FakeModel(TRANSCRIPT))
    assert text == "System: Be brief.\n\nUser: Hi\n\nAssistant:"
    assert stops == ["\nUser:"]
    text, stops = render_chat(MSGS, CHATML, FakeModel(CHATML))
    assert text.endswith("<|im_start|>assistant\n") and stops == ["\n<|im_start|>user"]


def test_bad_messages_and_templates():
    with pytest.raises(ValueError, match="role"):
        render_chat([{"role": "wizard", "content": "x"}], None, FakeModel())
    with pytest.raises(ValueError):
        render_chat([], None, FakeModel())
    with pytest.raises(mole.FormatError, match="chat template"):
        render_chat(MSGS, "{% for %}", FakeModel())
    # the sandbox refuses attribute access to internals
    with pytest.raises(mole.FormatError, match="unsafe"):
        render_chat(MSGS, "{{ messages.__class__.__mro__[1].__subclasses__() }}", FakeModel())
