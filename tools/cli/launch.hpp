// `clhost run --nproc N`: starts N ranks of one data-parallel run on this machine, as torchrun
// would (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT), and supervises
// them: SIGINT/SIGTERM are passed on; when a rank fails the others are stopped within a bounded
// time and the failure is named. docs/distributed.md.
#pragma once

#include <string>
#include <vector>

namespace clhost::tools {

// Runs `clhost run RUN_ARGS` as `nproc` ranks; returns the exit code of the run: 0, the failed
// rank's code (128 + signal when a signal ended it), or 128 + signal when interrupted.
// `grace_seconds`: how long the other ranks may take to stop by themselves after one failed.
int run_local_ranks(int nproc, const std::vector<std::string>& run_args, double grace_seconds);

}  // namespace clhost::tools
