"""Helpers of the CLI tests: run `bdiff` in-process, read its one-line error."""
from bdiff import cli


def call(capsys, *args):
  """Run the CLI in-process: (exit status, stdout, stderr)."""
  code = cli.main([str(a) for a in args])
  out, err = capsys.readouterr()
  return code, out, err


def one_line_error(err: str) -> str:
  """The error line; fails unless stderr ends with one `bdiff: error:` line, no traceback."""
  assert "Traceback" not in err, err
  errors = [line for line in err.splitlines() if line.startswith("bdiff: error: ")]
  assert len(errors) == 1 and err.rstrip().endswith(errors[0]), err
  return errors[0]
