#pragma once
// The dpdk backend's io::loop for one worker: io::stack_loop (apprelay's TCP/IP) over the
// worker's queue of a started dpdk::port. Call on the worker thread, after pinning it: the
// thread is registered with EAL here (mempool caches, dpdk/eal.hh) and stays registered until
// the loop is destroyed on that thread or the process exits.
#include "dataplane/io/dpdk/port.hh"
#include "dataplane/io/stack/loop.hh"

#include <memory>
#include <string>

namespace apprelay::io::dpdk {

result<std::unique_ptr<stack_loop>> make_worker_loop(port& p, uint16_t worker,
                                                     const net::stack_config& cfg,
                                                     std::string* why);

} // namespace apprelay::io::dpdk
