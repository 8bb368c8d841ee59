from bevt.cli import main

raise SystemExit(main())
