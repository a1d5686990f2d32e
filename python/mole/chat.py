"""Chat prompts: the GGUF's chat template rendered with jinja2's sandbox, or a plain default."""
from __future__ import annotations

import functools

from . import errors
from . import gguf_names as G

# For base models without a template: a plain transcript; generation stops when the model starts
# the next user turn.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m.role == 'system' %}{{ m.content }}\n\n"
    "{% elif m.role == 'user' %}User: {{ m.content }}\n"
    "{% else %}Assistant: {{ m.content }}\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)
DEFAULT_STOPS = ["\nUser:", "\nAssistant:"]


def _check_messages(messages) -> list[dict]:
    if not isinstance(messages, (list, tuple)) or not messages:
        raise errors.InvalidArgumentError("messages must be a non-empty list of {'role', 'content'} dicts")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise errors.InvalidArgumentError(f"message {i} must be a dict with 'role' and 'content'")
        if m["role"] not in ("system", "user", "assistant"):
            raise errors.InvalidArgumentError(f"message {i}: unknown role {m['role']!r}")
        if not isinstance(m["content"], str):
            raise errors.InvalidArgumentError(f"message {i}: content must be a string")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _raise_exception(msg):
    raise errors.InvalidArgumentError(f"chat template: {msg}")


@functools.lru_cache(maxsize=8)
def _compile(template: str):
    """The template compiled in jinja2's sandbox, once per template text (mole serve renders one per request;
    compiling costs milliseconds, rendering microseconds). A compiled template may render in several threads."""
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat(messages, template: str | None, model) -> tuple[str, list[str]]:
    """(prompt text, extra stop strings) for messages under template (None: the default)."""
    import jinja2

    msgs = _check_messages(messages)
    md = model.metadata
    tokens = md.get(G.KEY_TOKENS) or []

    def tok(key):
        i = md.get(key)
        return tokens[i] if isinstance(i, int) and 0 <= i < len(tokens) else ""

    specials = dict(bos_token=tok(G.KEY_BOS_ID), eos_token=tok(G.KEY_EOS_ID))
    where = f"the chat template ({G.KEY_CHAT_TEMPLATE})" if template else "the default chat template"
    try:
        tpl = _compile(template or DEFAULT_TEMPLATE)
    except jinja2.TemplateSyntaxError as e:
        raise errors.FormatError(f"{where} does not parse: line {e.lineno}: {e.message}") from None
    except jinja2.TemplateError as e:   # e.g. an unknown filter, found when compiling
        raise errors.FormatError(f"{where} does not compile: {e}") from None
    try:
        text = tpl.render(messages=msgs, add_generation_prompt=True, **specials)
        # A base model does not know where its turn ends: also stop where the template would start
        # the next user turn ("User:" for a transcript template).
        probe = tpl.render(messages=[{"role": "user", "content": "\x00"}], add_generation_prompt=False, **specials)
    except errors.MoleError:
        raise   # the template's raise_exception(): a complaint about the messages
    except Exception as e:   # noqa: BLE001 -- a template may fail in any way (TypeError, RecursionError, ...)
        raise errors.FormatError(f"{where} failed to render: {type(e).__name__}: {e}") from None
    user_prefix = probe.split("\x00")[0].strip() if "\x00" in probe else ""
    stops = ["\n" + user_prefix] if user_prefix else []
    if not template:
        stops += [s for s in DEFAULT_STOPS if s not in stops]
    return text, stops


def prompt_tokens(messages, model) -> int:
    """Tokens of the prompt Model.chat would evaluate for these messages."""
    prompt, _ = render_chat(messages, model.metadata.get(G.KEY_CHAT_TEMPLATE), model)
    return len(model.tokenize(prompt, add_bos=False, special=True))


def trim_history(messages, model, limit: int, reserve: int) -> tuple[list[dict], int]:
    """Drops the oldest turns until the rendered prompt and `reserve` more tokens (room for the reply) fit in
    `limit` tokens. A leading system message and the last message always stay; a user message goes together
    with the assistant reply that followed it. Returns (the messages kept, how many were dropped); when even
    the last message alone does not fit, that is the caller's ContextFullError."""
    head = list(messages[:1]) if messages and messages[0].get("role") == "system" else []
    turns = list(messages[len(head):])
    dropped = 0
    while len(turns) > 1 and prompt_tokens(head + turns, model) + reserve > limit:
        n = 2 if len(turns) > 2 and turns[0].get("role") == "user" and turns[1].get("role") == "assistant" else 1
        del turns[:n]
        dropped += n
    return head + turns, dropped
