from phi1.cli import main

raise SystemExit(main())
