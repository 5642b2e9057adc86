"""Chat with the embedded default backbone, or with an enrolled persona.

    python examples/quickstart.py                 # bare backbone
    PERSONA_PASSPHRASE=... python examples/quickstart.py me    # an enrolled profile
"""

import sys

from persona_sdk import GenerationConfig, PersonaAgent


def main() -> None:
    settings = GenerationConfig(temperature=0.7, max_new_tokens=64, seed=1)
    if len(sys.argv) > 1:
        agent = PersonaAgent.open(sys.argv[1], generation=settings)  # passphrase from PERSONA_PASSPHRASE
    else:
        agent = PersonaAgent(generation=settings)
    with agent:
        print(agent.reply("hi, what do you do on weekends?"))
        for piece in agent.stream("and what about during the week?"):
            print(piece, end="", flush=True)
        print()
        print(f"({len(agent.history)} turns so far)")


if __name__ == "__main__":
    main()
