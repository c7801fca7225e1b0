from csl_ros.cli import main

raise SystemExit(main())
