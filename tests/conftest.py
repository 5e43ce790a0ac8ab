import os

# The Triton backend runs on CPU tensors through Triton's interpreter in the test suite; set
# before anything imports triton, for every test module alike.
os.environ.setdefault("TRITON_INTERPRET", "1")

# Test modules import the shared harness as ``parity`` (this folder is on sys.path; the
# package under test is the installed ``fusedopt``, not the source tree).
