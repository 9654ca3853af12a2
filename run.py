"""Entry point: python run.py model=llama3b quant=int4   (see README.md and conf/; the code is harness/run.py)."""
from harness import use_interpreter_without_gpu

use_interpreter_without_gpu()  # before any module that defines a Triton kernel is imported

from harness.run import main  # noqa: E402

if __name__ == "__main__":
    main()
