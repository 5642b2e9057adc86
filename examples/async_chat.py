"""asyncio: ``areply`` / ``astream`` decode in a worker thread, the loop stays free.

    python examples/async_chat.py                    # the embedded default backbone
    python examples/async_chat.py --backbone PATH    # another backbone folder, or an ONNX export folder

The first run builds the backbone's ONNX export (announced on stderr; see quickstart.py).
"""

import argparse
import asyncio
import sys

from persona_sdk import GenerationConfig, PersonaAgent


async def main(backbone=None) -> None:
    settings = GenerationConfig(temperature=0.7, max_new_tokens=64, seed=1)
    with PersonaAgent(backbone=backbone, generation=settings, build=True,
                      progress=lambda message: print(message, file=sys.stderr)) as agent:
        print(await agent.areply("hi, what do you do on weekends?"))
        async for piece in agent.astream("and what about during the week?"):
            print(piece, end="", flush=True)
        print()
        print(f"({len(agent.history)} turns so far)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Chat from asyncio without blocking the event loop.")
    parser.add_argument("--backbone", help="Hugging Face causal-LM folder or ONNX export folder "
                                           "(default: the embedded SmolLM2-135M-Instruct)")
    asyncio.run(main(parser.parse_args().backbone))
