"""The image tests run the built CPU image in a container; `make image-test` builds it and runs them.

They are not part of `make test`: without LLM_SERVING_IMAGE (the image to run, which
`make image-test` sets) this folder collects nothing.
"""

import os

if not os.environ.get("LLM_SERVING_IMAGE"):
    collect_ignore_glob = ["test_*.py"]
