"""`python -m infermesh`: the same program as the `infermesh` and `mesh` commands."""

from infermesh.cli import main

if __name__ == "__main__":
    main(prog_name="infermesh")
