"""``python -m backpressure_client demo``."""

from ._demo import main

if __name__ == "__main__":
    raise SystemExit(main())
