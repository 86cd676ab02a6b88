"""`tpu-cal`: the console entry point (subcommands live in tpu_cal.cli)."""
import sys

from tpu_cal.cli import main as _main


def main():
    sys.exit(_main())


if __name__ == "__main__":
    main()
