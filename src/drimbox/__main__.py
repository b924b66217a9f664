from drimbox.entrypoints.cli import main

raise SystemExit(main())
