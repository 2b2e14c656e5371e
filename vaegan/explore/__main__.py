import sys

from vaegan.explore import main

sys.exit(main())
