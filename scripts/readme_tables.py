"""Rebuild README's generated blocks (tables, figures): see
:mod:`training_run.report.tables`.

    python scripts/readme_tables.py            # rewrite the blocks in README.md, redraw the figures
    python scripts/readme_tables.py --print    # print them only
"""

from training_run.report.tables import main

if __name__ == "__main__":
    main()
