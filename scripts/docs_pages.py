"""Rebuild the generated blocks of README.md and of the pages in docs/ (tables from the code and results/,
the figures of docs/results.md): see :mod:`training_run.report.pages`.

    python scripts/docs_pages.py            # rewrite every stale page, redraw the figures
    python scripts/docs_pages.py --check    # change nothing; exit 1 naming every page that is not current
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: the packages of this checkout
    sys.path.insert(0, str(ROOT))

from training_run.report.pages import main  # noqa: E402

if __name__ == "__main__":
    main()
