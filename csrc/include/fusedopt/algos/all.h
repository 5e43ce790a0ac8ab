// Every algorithm descriptor, and the schemas of the ops. The list the ops are registered from,
// FUSEDOPT_FOR_EACH_ALGORITHM (one op fusedopt::<A::kName> per entry, all with the schema below),
// and the includes of their headers are generated into contract.h and headers.h from ALGORITHMS
// in fusedopt/algorithms/__init__.py.
#pragma once

#include "fusedopt/algos/contract.h"
#include "fusedopt/algos/headers.h"  // generated too: every algorithm's header

// The schema of every step op after its name: the states and master weights it updates come
// from `table`, made by fusedopt::state_table (Note [state tables] in tensor_info.h); an empty
// `params` with grads means the table's own params (Note [owned params]), both lists empty its own
// params and grads (Note [owned grads]). `phase` 1 and 2 split
// a reducing algorithm's step in its two traversals, the per-tensor sums in `sums` between them
// (Note [split steps] in tensor_info.h).
#define FUSEDOPT_STEP_SCHEMA                                                                \
  "(Tensor(a!)[] params, Tensor[] grads, Tensor table, Tensor steps, Tensor index, "       \
  "Tensor hyper, bool[] flags, Tensor? grad_scale=None, Tensor? found_inf=None, "         \
  "Tensor(b!)? sums=None, int phase=0) -> ()"
// fusedopt::lookahead: Lookahead's slow-weight update (algos/lookahead.h), master weights optional.
#define FUSEDOPT_LOOKAHEAD_SCHEMA \
  "(Tensor(a!)[] params, Tensor(b!)[] slow, float alpha, Tensor(c!)[]? master=None) -> ()"
// fusedopt::release_table: drops the references a state table holds (Note [owned params]).
#define FUSEDOPT_RELEASE_TABLE_SCHEMA "(Tensor(a!) table) -> ()"
// The schema of fusedopt::state_table after its name (the state slots s0, s1, s2 in SLOTS order,
// an unused one an empty list; 8-bit states' scales and stochastic rounding's (seed, offset) rows:
// Note [8-bit states in the table] in tensor_info.h; grads the table is to own: Note [owned grads]).
#define FUSEDOPT_STATE_TABLE_SCHEMA                                                          \
  "(Tensor[] params, Tensor[] s0, Tensor[] s1, Tensor[] s2, Tensor[]? master, "             \
  "Tensor[]? scales=None, Tensor? rounding=None, Tensor[]? grads=None) -> Tensor"
