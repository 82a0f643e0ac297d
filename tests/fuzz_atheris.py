"""Coverage-guided fuzzing with atheris (libFuzzer) of the targets in tests/fuzz_targets.py:

    python -m tests.fuzz_atheris TARGET [CORPUS_DIR] -runs=N -max_total_time=S -timeout=T

An exception other than the parser's own error type, an assertion of the target, or an input
running over -timeout makes libFuzzer stop with a non-zero exit and write the input as a crash file."""
from __future__ import annotations

import sys

import atheris

# Only the daemons' own packages get coverage instrumentation (instrumenting everything takes
# minutes and does not help).
with atheris.instrument_imports(include=["mux_router", "frontgate", "tls_terminator"]):
    from tests import fuzz_targets


def main() -> None:
    target = fuzz_targets.TARGETS[sys.argv[1]]

    def one_input(raw: bytes) -> None:
        fdp = atheris.FuzzedDataProvider(raw)
        cuts = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 16))
        target(fdp.ConsumeBytes(fdp.remaining_bytes()), cuts)

    atheris.Setup([sys.argv[0], *sys.argv[2:]], one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
