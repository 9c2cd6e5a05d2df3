import sys

from dia_ray.cli import main

sys.exit(main())
