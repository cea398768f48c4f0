#pragma once
// Which cpu runs the control thread and which run data-plane workers, parsed from the operator's
// spec (`control=0,workers=1-3`). Parsed once at start-up; workers pin themselves with
// pin_current_thread() before entering their loop.
#include "dataplane/base/result.hh"

#include <string>
#include <string_view>
#include <vector>

namespace apprelay::core {

struct core_map {
    int control_cpu = 0;
    std::vector<int> worker_cpus; // ascending, no duplicates
    bool shared = false;          // control cpu may also be a worker cpu (small machines)
};

// Spec grammar (comma separated, keys in any order, each at most once):
//   control=<cpu>            required
//   workers=<list>           required; <list> is cpus and ranges `1,3-5`: a token without `=`
//                            continues the workers list
//   shared=0|1               optional, default 0
// On refusal returns errc::invalid_argument and, if `why` is not null, stores a message naming
// the problem (e.g. "cpu 7 is not available (available: 0-1)").
result<core_map> parse_core_map(std::string_view spec, const std::vector<int>& available_cpus,
                                std::string* why);

// Cpus the calling thread may run on (sched_getaffinity), ascending; empty if the call fails.
// Call before pinning: after pin_current_thread() it returns only the pinned cpu.
std::vector<int> available_cpus();

// Pins the calling thread to `cpu`. On failure returns errc::invalid_argument (bad cpu number)
// or errc::io_error and stores the reason in *why when `why` is not null.
result<void> pin_current_thread(int cpu, std::string* why);

// Canonical spec: `control=0,workers=1-3[,shared=1]`; parse_core_map(to_string(m)) == m.
std::string to_string(const core_map& map);

// Compact cpu list, `0-1,4`; used in messages and by to_string.
std::string cpu_list_to_string(const std::vector<int>& cpus);

} // namespace apprelay::core
