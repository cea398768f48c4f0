#include "dataplane/io/dpdk/loop.hh"

#include "dataplane/io/dpdk/eal.hh"

#include <fmt/format.h>

namespace apprelay::io::dpdk {

namespace {

// One worker's queue as the frame_port of a stack_loop.
class queue_port final : public frame_port {
public:
    explicit queue_port(queue& q) : _q(q) {}
    unsigned rx_burst(receiver& r, unsigned) override {
        return unsigned(_q.poll([&r](std::span<const std::byte> f) { r.on_frame(f); }));
    }
    net::link& tx() override { return _q.tx(); }
    void flush() override { _q.flush(); }

private:
    queue& _q;
};

} // namespace

result<std::unique_ptr<stack_loop>> make_worker_loop(port& p, uint16_t worker,
                                                     const net::stack_config& cfg,
                                                     std::string* why) {
    if (worker >= p.workers()) {
        *why = fmt::format("worker {} has no queue on port {} ({} queues)", worker, p.name(),
                           p.workers());
        return errc::invalid_argument;
    }
    if (auto r = register_worker_thread(why); !r) {
        return r.err();
    }
    net::stack_config c = cfg;
    c.mac = p.mac();
    return std::make_unique<stack_loop>(std::make_unique<queue_port>(p.worker_queue(worker)), c);
}

} // namespace apprelay::io::dpdk
