"""``python -m callwarden.esl [--config FILE]``: the FreeSWITCH adapter process.

``callwarden.esl.process`` must be the first import: it monkey-patches the standard library.
"""

from callwarden.esl import process  # isort: skip  (patches gevent before anything else)

import sys  # noqa: E402

if __name__ == "__main__":
    sys.exit(process.main())
