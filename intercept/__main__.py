"""Entry point for `python -m intercept`."""

from intercept.cmd.main import main

if __name__ == "__main__":
    main()
