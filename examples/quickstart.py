"""Chat with the embedded default backbone, or with an enrolled persona.

    python examples/quickstart.py                              # the bare default backbone
    PERSONA_PASSPHRASE=... python examples/quickstart.py me    # speak as the enrolled profile "me"
    python examples/quickstart.py --backbone PATH              # another backbone folder, or an ONNX export folder

The first run builds the backbone's ONNX export (``build=True``): it says so on
stderr first, takes a minute or so and needs the ``[export]`` extra; later runs
reuse it. Without ``build=True`` the agent raises an error naming the command
that builds it instead.
"""

import argparse
import sys

from persona_sdk import GenerationConfig, PersonaAgent


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description="Chat with the default backbone or an enrolled persona.")
    parser.add_argument("name", nargs="?", help="enrolled profile to speak as (passphrase from PERSONA_PASSPHRASE)")
    parser.add_argument("--backbone", help="Hugging Face causal-LM folder or ONNX export folder "
                                           "(default: the embedded SmolLM2-135M-Instruct)")
    args = parser.parse_args(argv)

    settings = GenerationConfig(temperature=0.7, max_new_tokens=64, seed=1)
    options = dict(backbone=args.backbone, generation=settings,
                   build=True, progress=lambda message: print(message, file=sys.stderr))
    if args.name:
        agent = PersonaAgent.open(args.name, **options)  # passphrase from PERSONA_PASSPHRASE
    else:
        agent = PersonaAgent(**options)
    with agent:
        print(agent.reply("hi, what do you do on weekends?"))
        for piece in agent.stream("and what about during the week?"):
            print(piece, end="", flush=True)
        print()
        print(f"({len(agent.history)} turns so far)")


if __name__ == "__main__":
    main()
