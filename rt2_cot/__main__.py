from rt2_cot.cli import main

raise SystemExit(main())
