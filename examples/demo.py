"""Start a job that writes to stdout and stderr over two seconds, and follow it live."""

from __future__ import annotations

import sys
import tempfile
import uuid

from jobworker import Command, Worker

SCRIPT = """
for i in 1 2 3 4 5; do
  echo "stdout line $i"
  echo "stderr line $i" >&2
  sleep 0.4
done
"""


def main() -> None:
    owner = uuid.uuid4()
    with tempfile.TemporaryDirectory() as logs, Worker(logs) as worker:
        job = worker.start(Command("sh", ["-c", SCRIPT]), owner)
        info = worker.query(job, owner)
        print(f"job {job} (pid {info.pid}) logging to {info.log_path}", file=sys.stderr)
        with worker.stream(job, owner) as output:
            for chunk in output:
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        print(f"job ended: {worker.query(job, owner).status}", file=sys.stderr)


if __name__ == "__main__":
    main()
