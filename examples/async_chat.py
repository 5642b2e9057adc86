"""asyncio: ``areply`` / ``astream`` decode in a worker thread, the loop stays free.

    python examples/async_chat.py
"""

import asyncio

from persona_sdk import PersonaAgent


async def main() -> None:
    with PersonaAgent() as agent:
        print(await agent.areply("hi, what do you do on weekends?"))
        async for piece in agent.astream("tell me more"):
            print(piece, end="", flush=True)
        print()


if __name__ == "__main__":
    asyncio.run(main())
