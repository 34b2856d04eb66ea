from refplan.cli import main

raise SystemExit(main())
