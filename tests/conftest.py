import os

# The Triton backend runs on CPU tensors through Triton's interpreter in the test suite; set
# before anything imports triton, for every test module alike.
os.environ.setdefault("TRITON_INTERPRET", "1")
