import sys

from persona_sdk.cli import main

sys.exit(main())
