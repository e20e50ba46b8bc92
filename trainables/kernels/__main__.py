from trainables.kernels import main

raise SystemExit(main())
