#pragma once
// DPDK Environment Abstraction Layer start-up for the dpdk backend. The control thread builds
// eal_settings from the config, checks them against the core map, then calls init_eal() once,
// before any port is opened; cleanup_eal() runs last at shutdown, after every port is closed.
//
// Typical settings on a machine without hugepages (tests, CI):
//   eal_settings s;
//   s.lcores = "0-2"; s.no_huge = true; s.memory_mb = 256; s.no_pci = true;
//   s.vdevs = {"net_tap0,iface=ar0"}; s.file_prefix = "apprelay-1234";
// With hugepages reserved, drop no_huge/memory_mb; for a real NIC drop no_pci and put its PCI
// address in allow (and open the port by that address).
#include "dataplane/base/result.hh"
#include "dataplane/core/core_map.hh"

#include <string>
#include <vector>

namespace apprelay::io::dpdk {

struct eal_settings {
    std::string program_name = "apprelay"; // argv[0]: EAL uses it in log lines
    // Cpus EAL knows about. The first one is the main lcore: rte_eal_init pins the calling
    // (control) thread to it. A plain list ("0-2,4") is passed as -l; a mapping with '@' or
    // '(' ("0@0,1@2") as --lcores. Empty: EAL uses every cpu the process may run on.
    std::string lcores;
    std::vector<std::string> allow; // -a <pci address>[,devargs], one per entry
    std::vector<std::string> vdevs; // --vdev <name>[,args], e.g. "net_tap0,iface=ar0"
    std::string file_prefix;        // --file-prefix: distinct per concurrent DPDK process
    bool no_huge = false;           // --no-huge: anonymous memory, no hugepages needed
    unsigned memory_mb = 0;         // -m <MiB>; 0 = not passed (required with no_huge)
    bool no_pci = false;            // --no-pci: skip the PCI bus scan (vdev-only setups)
    // --log-level values. EAL and PMDs log several info lines per start; errors still show.
    std::vector<std::string> log_levels{"lib.eal:error", "pmd.*:warning"};
    std::vector<std::string> extra; // appended verbatim, last
};

// The argv init_eal passes to rte_eal_init (argv[0] is program_name). Pure: tests use it.
std::vector<std::string> build_eal_argv(const eal_settings& s);

// Cpus named by s.lcores (for --lcores the physical cpus, after '@'), ascending. Empty lcores
// gives an empty list (EAL default: all cpus). On a malformed list returns invalid_argument
// with the reason in *why.
result<std::vector<int>> eal_cpus(const eal_settings& s, std::string* why);

// Refuses settings that contradict the core map, naming the cpu in *why:
// - a worker cpu missing from the EAL cpus ("worker cpu 3 is not in EAL -l 0-2"): EAL sizes
//   its per-socket structures and lcore table from that set;
// - the main lcore (first EAL cpu) on a cpu other than the control cpu: rte_eal_init pins the
//   calling control thread there, and on a worker cpu it would steal that worker's core.
// Empty lcores passes (EAL takes every available cpu, which includes the map's).
result<void> check_against_core_map(const eal_settings& s, const core::core_map& map,
                                    std::string* why);

// Builds the argv and runs rte_eal_init. Once per process: DPDK cannot initialise twice (not
// even after cleanup), so a second call returns errc::not_allowed. Failures map rte_errno:
// ENOMEM (no memory: hugepages missing or -m too large) -> no_memory, EACCES -> not_allowed,
// EINVAL -> invalid_argument, others -> io_error; *why gets rte_strerror and the argv.
result<void> init_eal(const eal_settings& s, std::string* why);

bool eal_running() noexcept;

// rte_eal_cleanup: releases EAL memory; removes the runtime directory when it is empty. Call after
// every port is closed and every registered worker thread has unregistered. Idempotent.
void cleanup_eal() noexcept;

// Worker threads are the relay's own threads (pinned with core::pin_current_thread), not EAL
// lcores. Registering gives the thread an lcore id, which is what makes the mempool per-lcore
// cache work: without one, rte_lcore_id() is LCORE_ID_ANY and every mbuf alloc/free goes to
// the shared pool ring (a compare-and-swap on a cache line all workers fight over). Call on the
// worker thread after pinning, before the first rx_burst/tx_alloc; unregister before it exits.
// Fails when EAL is not running or its lcore table is full (RTE_MAX_LCORE).
result<void> register_worker_thread(std::string* why);
void unregister_worker_thread() noexcept;

} // namespace apprelay::io::dpdk
