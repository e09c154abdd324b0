from nomoat.cli import main

raise SystemExit(main())
