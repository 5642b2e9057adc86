"""Talk to `persona serve` with the official `openai` client (any OpenAI-compatible client works).

    persona serve --name me                  # in another terminal: unlocks "me", prints where the token is
    python examples/serve_client.py          # lists the models, then streams a reply from the first persona
    python examples/serve_client.py --model backbone --url http://127.0.0.1:8080/v1

The bearer token is read from the file `persona serve` wrote (owner-only, in
the user's data folder); pass --token-file to read another one.
"""

import argparse
from pathlib import Path

from openai import OpenAI


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Stream a reply from a local persona server.")
    parser.add_argument("--url", default="http://127.0.0.1:8080/v1", help="the server's /v1 address")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file (default: persona's)")
    parser.add_argument("--model", default=None, help="model id (default: the first persona, else the backbone)")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    if args.token_file is None:
        from persona_sdk.server import token_path

        args.token_file = token_path()
    client = OpenAI(base_url=args.url, api_key=args.token_file.read_text().strip(), max_retries=0)

    models = [m.id for m in client.models.list()]
    print("models:", ", ".join(models))
    model = args.model or next((m for m in models if m.startswith("persona/")), "backbone")

    messages = [{"role": "user", "content": "hi, what do you do on weekends?"}]
    whole = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0,
                                           seed=args.seed)
    print(f"{model}> {whole.choices[0].message.content}")

    messages += [{"role": "assistant", "content": whole.choices[0].message.content},
                 {"role": "user", "content": "and what about during the week?"}]
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=32, temperature=0.7,
                                            seed=args.seed, stream=True)
    print(f"{model}> ", end="", flush=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            print(chunk.choices[0].delta.content, end="", flush=True)
    print()


if __name__ == "__main__":
    main()
