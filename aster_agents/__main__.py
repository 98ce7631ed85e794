from __future__ import annotations

from aster_agents.cli.main import main

if __name__ == "__main__":
    main()
