"""``python -m persona_sdk.cli`` (what ``torchrun -m persona_sdk.cli source train ...`` runs)."""

import sys

from persona_sdk.cli import main

sys.exit(main())
