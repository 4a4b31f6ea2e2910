import sys

from llm_serving.cli import main

sys.exit(main())
