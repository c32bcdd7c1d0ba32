from experiments.benchmark.main import main

raise SystemExit(main())
