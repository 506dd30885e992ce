"""OpenAI's own Python client against `kiln serve` (tests/serve.rs runs it).

    python tests/openai_client.py BASE_URL MODEL

Lists the models, asks for a completion and a chat reply, whole and streamed, and sends two
bad requests; prints what it got as one JSON object for the Rust test to check.
"""

import json
import sys

import openai


def main() -> None:
    base_url, model = sys.argv[1], sys.argv[2]
    client = openai.OpenAI(base_url=base_url, api_key="not-needed", max_retries=0)
    out = {"models": [m.id for m in client.models.list().data]}

    completion = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=0
    )
    out["completion"] = completion.choices[0].text
    out["completion_finish"] = completion.choices[0].finish_reason
    out["completion_usage"] = completion.usage.completion_tokens
    streamed = client.completions.create(
        model=model, prompt="Once upon a time", max_tokens=12, temperature=0, stream=True
    )
    out["completion_streamed"] = "".join(c.choices[0].text for c in streamed if c.choices)

    messages = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=12, temperature=0
    )
    out["chat"] = chat.choices[0].message.content
    out["chat_role"] = chat.choices[0].message.role
    streamed = client.chat.completions.create(
        model=model,
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    pieces, usage = [], None
    for chunk in streamed:
        if chunk.usage is not None:
            usage = chunk.usage.completion_tokens
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
    out["chat_streamed"] = "".join(pieces)
    out["chat_streamed_usage"] = usage

    errors = {}
    try:
        client.completions.create(model=model, prompt="x", temperature=-1)
    except openai.BadRequestError as e:
        errors["negative_temperature"] = [e.status_code, e.body["message"]]
    try:
        client.chat.completions.create(model="gpt-4o", messages=messages)
    except openai.NotFoundError as e:
        errors["unknown_model"] = [e.status_code, e.body["message"]]
    out["errors"] = errors
    print(json.dumps(out))


if __name__ == "__main__":
    main()
